"""Stop strings over streamed text (pure).

Text is released to the client only once it can no longer be the beginning of a
stop string, so a stop sequence split across tokens is never half-sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class StopMatcher:
    stops: tuple[str, ...]
    _held: str = field(default="", init=False)
    stopped: bool = field(default=False, init=False)

    def push(self, text: str) -> str:
        """Add generated text; return what is safe to send now.

        After a stop string is seen, `stopped` is True and the text before it
        is returned; the stop string itself and anything after it are dropped.
        """
        if self.stopped:
            return ""
        self._held += text
        cut = self._first_stop()
        if cut is not None:
            self.stopped = True
            safe, self._held = self._held[:cut], ""
            return safe
        keep = self._longest_partial_stop()
        safe = self._held[: len(self._held) - keep]
        self._held = self._held[len(safe) :]
        return safe

    def flush(self) -> str:
        """At the end of generation: whatever was held back is not a stop after all."""
        rest, self._held = ("" if self.stopped else self._held), ""
        return rest

    def _first_stop(self) -> int | None:
        hits = [i for i in (self._held.find(s) for s in self.stops if s) if i >= 0]
        return min(hits) if hits else None

    def _longest_partial_stop(self) -> int:
        """Length of the longest tail of the held text that begins some stop string."""
        longest = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self._held)), longest, -1):
                if self._held.endswith(stop[:n]):
                    longest = n
                    break
        return longest
