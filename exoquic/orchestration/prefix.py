"""The prefix cache: a conversation's next turn starts from the KV caches of an
earlier request's prompt instead of prefilling it all again. Pure bookkeeping:
the ring (ring.py) sends and the engines copy.

When a request ends, its origin may ask every node of the plan to *keep* its
caches (`Release.keep`: how many leading positions may be reused), and
remembers that prompt in its `PrefixIndex`. Each node keeps them in its
`PrefixStore`, least recently used first, within a byte budget. A later
request whose prompt starts with the same tokens asks, in its first `Forward`,
to start from that entry (`Forward.reuse_from`, `reuse_length`); each node
copies the entry's first positions into the new request's own cache
(`Engine.copy_prefix`) and runs only the rest. A node that no longer holds the
entry answers with a miss, and the origin sends the prompt again in full.

Only positions that a cold run would compute identically are reused: those of
a prompt (a request's generated tokens ran as decode steps, which round
differently from a prefill), in whole prefill chunks from position 0 (the
chunks of the rest then fall where a cold run's fall). So a reused prefix
changes no output, greedy or seeded. Entries belong to one plan version (one
model, one partition): a new plan drops them all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_INDEX_ENTRIES = 256


@dataclass(frozen=True)
class PrefixHit:
    """Start a request from entry `entry` (an earlier request's wire id): copy its
    first `length` positions."""

    entry: str
    length: int


def reusable_length(prompt_length: int, align: int) -> int:
    """Leading positions of a prompt worth keeping: whole chunks of `align`."""
    return prompt_length // align * align


class PrefixIndex:
    """The origin's record of the prompts whose caches the ring kept, by entry.

    Entries of one plan version only: looking up under a newer plan drops the
    rest. At most `max_entries`, least recently used dropped first (a node may
    have evicted an entry already: a miss costs one retried first step).
    """

    def __init__(self, align: int, max_entries: int = DEFAULT_INDEX_ENTRIES) -> None:
        self.align = align
        self.max_entries = max_entries
        self._version = -1
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entry: str, plan_version: int, tokens: Sequence[int]) -> None:
        """Remember that the nodes of plan `plan_version` keep `tokens`' positions
        under `entry` (`tokens` whole chunks long)."""
        if plan_version != self._version:
            self._switch(plan_version)
        self._entries[entry] = np.asarray(tokens, dtype=np.int64)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def lookup(self, plan_version: int, prompt: Sequence[int]) -> PrefixHit | None:
        """The entry sharing the longest reusable prefix with `prompt`, if any.

        At least the prompt's last position is left to run (its logits are the
        first token's), and the length is whole chunks."""
        if plan_version != self._version:
            self._switch(plan_version)
        tokens = np.asarray(prompt, dtype=np.int64)
        limit = reusable_length(len(tokens) - 1, self.align)
        best: PrefixHit | None = None
        for entry, kept in self._entries.items():
            shared = reusable_length(_common_prefix(kept, tokens[:limit]), self.align)
            if shared and (best is None or shared > best.length):
                best = PrefixHit(entry, shared)
        if best is not None:
            self._entries.move_to_end(best.entry)
        return best

    def discard(self, entry: str) -> None:
        self._entries.pop(entry, None)

    def _switch(self, plan_version: int) -> None:
        self._version = plan_version
        self._entries.clear()


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


@dataclass
class _Kept:
    plan_version: int
    positions: int  # leading positions that may be reused
    nbytes: int


@dataclass
class PrefixStatistics:
    entries: int = 0
    bytes: int = 0
    budget: int = 0
    kept: int = 0  # requests whose caches were kept
    hits: int = 0
    misses: int = 0
    evicted: int = 0
    reused_positions: int = 0  # positions copied instead of computed


class PrefixStore:
    """A node's kept caches, least recently used first, within `budget` bytes.

    It only decides: the caller frees the engine caches of the entries that
    `keep` and `drop_all` return (an entry's cache is the engine's cache of the
    request it was, under the same id).
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[str, _Kept] = OrderedDict()
        self._stats = PrefixStatistics(budget=budget)

    def keep(self, entry: str, plan_version: int, positions: int, nbytes: int) -> list[str]:
        """Keep `entry` (its first `positions` reusable, its cache `nbytes` big);
        the entries to free now: the least recently used beyond the budget,
        those of older plans, or `entry` itself when it alone is over budget."""
        freed = [e for e, kept in self._entries.items() if kept.plan_version != plan_version]
        for old in freed:
            self._remove(old)
        if positions <= 0 or nbytes > self.budget:
            return [*freed, entry]
        self._entries[entry] = _Kept(plan_version, positions, nbytes)
        self._stats.bytes += nbytes
        self._stats.kept += 1
        while self._stats.bytes > self.budget:
            oldest = next(iter(self._entries))
            self._remove(oldest)
            self._stats.evicted += 1
            freed.append(oldest)
        return freed

    def take(self, entry: str, plan_version: int, length: int) -> bool:
        """Whether `entry` holds `length` reusable positions under plan
        `plan_version` (a hit marks it recently used). The entry stays: several
        requests may copy the same prefix."""
        kept = self._entries.get(entry)
        if kept is None or kept.plan_version != plan_version or kept.positions < length:
            self._stats.misses += 1
            return False
        self._entries.move_to_end(entry)
        self._stats.hits += 1
        self._stats.reused_positions += length
        return True

    def drop_all(self) -> list[str]:
        """Forget every entry (a new plan); the entries to free."""
        dropped = list(self._entries)
        for entry in dropped:
            self._remove(entry)
        return dropped

    def statistics(self) -> PrefixStatistics:
        self._stats.entries = len(self._entries)
        return self._stats

    def _remove(self, entry: str) -> None:
        self._stats.bytes -= self._entries.pop(entry).nbytes
