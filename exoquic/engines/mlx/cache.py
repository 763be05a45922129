"""Per-request KV caches for the MLX engine."""

from __future__ import annotations

import mlx.core as mx


class LayerCache:
    """Keys and values of one layer for one request, grown in steps.

    Like mlx-lm's `KVCache`: the buffers are `(1, kv_heads, capacity, head_dim)`
    and grow by `step` positions at a time, so a decode step writes into spare
    room instead of concatenating the whole history.
    """

    step = 256

    def __init__(self) -> None:
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """Append `(1, KV, T, hd)` keys and values; return everything cached so far."""
        prev, new = self.offset, keys.shape[2]
        if self.keys is None or self.values is None or prev + new > self.keys.shape[2]:
            self._grow(keys, values, prev + new)
        assert self.keys is not None and self.values is not None
        self.offset = prev + new
        self.keys[..., prev : self.offset, :] = keys
        self.values[..., prev : self.offset, :] = values
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    def _grow(self, keys: mx.array, values: mx.array, needed: int) -> None:
        B, kv_heads, _, head_dim = keys.shape
        capacity = (needed + self.step - 1) // self.step * self.step
        new_k = mx.zeros((B, kv_heads, capacity, head_dim), keys.dtype)
        new_v = mx.zeros((B, kv_heads, capacity, head_dim), values.dtype)
        if self.keys is not None and self.values is not None:
            new_k[..., : self.offset, :] = self.keys[..., : self.offset, :]
            new_v[..., : self.offset, :] = self.values[..., : self.offset, :]
        self.keys, self.values = new_k, new_v

    def copy_prefix(self, length: int) -> LayerCache:
        """A new cache holding a copy of this one's first `length` positions."""
        copy = LayerCache()
        if self.keys is not None and self.values is not None:
            copy.update_and_fetch(self.keys[..., :length, :], self.values[..., :length, :])
            # Evaluated now: the copy must not keep a lazy reference to this cache.
            mx.eval(copy.keys, copy.values)
        return copy

    @property
    def nbytes(self) -> int:
        if self.keys is None or self.values is None:
            return 0
        return self.keys.nbytes + self.values.nbytes


class RequestCache:
    """The KV caches of one request across a shard's layers."""

    def __init__(self, num_layers: int) -> None:
        self.layers = [LayerCache() for _ in range(num_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].offset if self.layers else 0

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    def copy_prefix(self, length: int) -> RequestCache:
        """A new request's cache starting with a copy of this one's first `length` positions."""
        copy = RequestCache(0)
        copy.layers = [layer.copy_prefix(length) for layer in self.layers]
        return copy
