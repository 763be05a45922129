"""The interface every inference engine implements.

An engine runs one shard of a model. Its methods are blocking and are called
from one dedicated thread (orchestration's `EngineWorker`), so engines need no
locking of their own. Each request owns a KV cache, created on
its first `forward` and freed by `release`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from exoquic.models.shard import Shard
from exoquic.models.weights import ShardWeights


class EngineError(Exception):
    """An engine could not do what was asked (bad input, out of context...)."""


class ContextOverflowError(EngineError):
    """A request would grow past the engine's maximum context length."""


@dataclass(frozen=True)
class ForwardItem:
    """One request's input to a forward step (see `Engine.forward`).

    `all_logits` asks the last shard for the logits of every position, `(T,
    vocab)`, not only the last one's (scoring a prompt: `echo` with logprobs);
    such an item runs alone, never in a decode batch. Other shards ignore it.
    """

    request_id: str
    inputs: np.ndarray
    all_logits: bool = False


class Engine(ABC):
    name: ClassVar[str]

    def __init__(self, max_context: int = 2048) -> None:
        self.max_context = max_context
        self.positions_run = 0
        """Positions every `forward` so far ran through the shard's layers (a prefix
        cache hit shows as fewer): engines add each step's positions."""

    @property
    @abstractmethod
    def shard(self) -> Shard | None:
        """The loaded shard, or None before `load`."""

    @abstractmethod
    def load(self, weights: ShardWeights) -> None:
        """Take the shard's weights (replacing any loaded shard and its caches)."""

    @abstractmethod
    def forward(self, request_id: str, inputs: np.ndarray) -> np.ndarray:
        """Run the shard's layers on T new positions of one request.

        inputs: int32 token ids `(T,)` on the first shard, else float32 hidden
        states `(T, hidden_size)` from the previous shard. The positions continue
        from the request's cache length, which grows by T.

        Returns float32 hidden states `(T, hidden_size)`, or on the last shard
        the float32 logits `(vocab_size,)` of the final position (of every
        position, `(T, vocab_size)`, for a `ForwardItem` with `all_logits`).
        Raises ContextOverflowError when the cache would exceed `max_context`.
        """

    def forward_batch(self, items: list[ForwardItem]) -> list[np.ndarray]:
        """Forward several requests in one step; engines may batch decode steps."""
        return [self.forward(item.request_id, item.inputs) for item in items]

    @abstractmethod
    def cache_length(self, request_id: str) -> int:
        """Positions held in the request's KV cache (0 if it has none)."""

    @abstractmethod
    def release(self, request_id: str) -> None:
        """Free the request's KV cache; releasing an unknown request is a no-op."""

    @abstractmethod
    def active_requests(self) -> int:
        """How many requests hold a KV cache now."""

    def copy_prefix(self, source: str, target: str, length: int) -> None:
        """Start request `target` with a copy of the first `length` positions of
        `source`'s KV cache (a prefix cache hit: `target` then forwards only the
        positions after them). The copy is `target`'s own: neither request ever
        writes into the other's cache. Raises EngineError when `source` holds
        fewer positions or `target` has a cache already."""
        raise EngineError(f"the {self.name} engine cannot copy KV caches")

    def cache_bytes_per_position(self) -> int:
        """Bytes one position of a request's KV cache takes on this shard (0 before
        `load`): what a prefix cache counts against its budget."""
        return 0

    def _check_copy(self, source: str, target: str, length: int) -> None:
        """Raise EngineError unless `copy_prefix(source, target, length)` may run."""
        held = self.cache_length(source)
        if length < 1 or held < length:
            raise EngineError(f"request {source!r} holds {held} positions, not {length}")
        if self.cache_length(target):
            raise EngineError(f"request {target!r} has a KV cache already")

    def _check_room(self, items: list[ForwardItem], new_positions: list[int]) -> None:
        """Raise ContextOverflowError if a request would grow past `max_context`.

        `new_positions[i]` is how many positions `items[i]` adds (a request may
        appear in several items). Engines call it before any cache changes, so
        an overflowing batch leaves every request as it was.
        """
        grown: Counter[str] = Counter()
        for item, new in zip(items, new_positions, strict=True):
            grown[item.request_id] += new
        for request_id, new in grown.items():
            length = self.cache_length(request_id)
            if length + new > self.max_context:
                raise ContextOverflowError(
                    f"request {request_id!r}: {length} cached + {new} new positions "
                    f"exceed the maximum context of {self.max_context}"
                )

    def unload(self) -> None:  # noqa: B027 - optional hook; the default keeps nothing
        """Drop the weights and every cache."""

    def warm_up(self) -> None:  # noqa: B027 - optional hook; the default has nothing to do
        """Prepare what the first requests will need (compiled kernels, traced steps),
        so that they do not wait for it; called after `load`. Leaves no cache behind."""
