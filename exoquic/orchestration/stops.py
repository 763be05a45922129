"""Stop strings over streamed text (pure).

Text is released to the client only once it can no longer be the beginning of a
stop string, so a stop sequence split across tokens is never half-sent.

Generation stops at the first position where some stop string ends; the text
before the longest stop ending there is the reply. This depends only on the
text, not on how it was split into pieces. Matching follows one
Knuth-Morris-Pratt automaton per stop string, so the work is linear in the
generated text plus the stop strings, and only the unreleased tail (shorter
than the longest stop string) is held. The API caps how many stop strings a
request gives and how long they are (`exoquic.api.schemas`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


class _Automaton:
    """How much of one stop string the text seen so far ends with."""

    def __init__(self, stop: str) -> None:
        self.stop = stop
        self.matched = 0  # the text ends with stop[:matched]
        self._fail = _failure_table(stop)

    def step(self, char: str) -> bool:
        """Feed one character; True when the text now ends with the whole stop string."""
        stop, matched = self.stop, self.matched
        if matched == len(stop):
            matched = self._fail[matched - 1]
        while matched and stop[matched] != char:
            matched = self._fail[matched - 1]
        if stop[matched] == char:
            matched += 1
        self.matched = matched
        return matched == len(stop)


def _failure_table(stop: str) -> list[int]:
    """fail[i]: length of the longest proper prefix of stop[: i + 1] that is also its suffix."""
    fail = [0] * len(stop)
    k = 0
    for i in range(1, len(stop)):
        while k and stop[i] != stop[k]:
            k = fail[k - 1]
        if stop[i] == stop[k]:
            k += 1
        fail[i] = k
    return fail


@dataclass
class StopMatcher:
    stops: tuple[str, ...]
    stopped: bool = field(default=False, init=False)
    _held: str = field(default="", init=False)
    _automata: list[_Automaton] = field(init=False)

    def __post_init__(self) -> None:
        self._automata = [_Automaton(s) for s in self.stops if s]

    def push(self, text: str) -> str:
        """Add generated text; return what is safe to send now.

        After a stop string is seen, `stopped` is True and the text before it
        is returned; the stop string itself and anything after it are dropped.
        """
        if self.stopped:
            return ""
        held = self._held + text
        start = len(self._held)
        for end, char in enumerate(text, start + 1):
            ended = [a.stop for a in self._automata if a.step(char)]
            if ended:
                self.stopped = True
                self._held = ""
                return held[: end - max(map(len, ended))]
        keep = max((a.matched for a in self._automata), default=0)
        self._held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep]

    def flush(self) -> str:
        """At the end of generation: whatever was held back is not a stop after all."""
        rest, self._held = ("" if self.stopped else self._held), ""
        return rest
