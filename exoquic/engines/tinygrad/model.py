"""A llama shard as tinygrad computations: layer stack (prefill / batched decode) and head.

Shapes in comments: T new positions, B requests, D hidden, H query heads,
KV key/value heads, hd head dim, S attended positions, C cache capacity.
Positions arrive as bound tinygrad variables, so one traced graph serves every
position (and, through the JIT, every request's cache).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tinygrad import Tensor, UOp, dtypes

from exoquic.engines.tinygrad.device import DEVICE
from exoquic.engines.tinygrad.matrices import Matrix, matmul, to_matrix
from exoquic.models.config import ModelConfig
from exoquic.models.shard import Shard
from exoquic.models.weights import (
    EMBED_NAME,
    HEAD_NAME,
    NORM_NAME,
    QuantizedTensor,
    ShardWeights,
    WeightArray,
)

# (q, k, v) of some rows -> attention output `(rows, H*hd)`.
AttendFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: Tensor
    q: Matrix
    k: Matrix
    v: Matrix
    o: Matrix
    mlp_norm: Tensor
    gate: Matrix
    up: Matrix
    down: Matrix


class ShardModel:
    """The device weights of one shard and the computations over them."""

    def __init__(self, weights: ShardWeights, capacity: int) -> None:
        self.config: ModelConfig = weights.config
        self.shard: Shard = weights.shard
        self.capacity = capacity
        self.layers = [_layer_weights(weights, i) for i in self.shard.layers()]
        # Embedding rows are looked up on the host: T rows per step are cheap to decode.
        self.embedding: WeightArray | None = (
            weights.tensors[EMBED_NAME] if self.shard.is_first else None
        )
        self.norm: Tensor | None = None
        self.head_matrix: Matrix | None = None
        if self.shard.is_last:
            self.norm = _vector(weights.dense(NORM_NAME))
            self.head_matrix = to_matrix(weights.tensors[HEAD_NAME])
        self.cos, self.sin = _rope_tables(self.config, capacity)

    def new_cache(self) -> Tensor:
        """A zeroed KV cache for one request: `(layers, 2, KV, C, hd)` float32."""
        c = self.config
        shape = (len(self.layers), 2, c.num_kv_heads, self.capacity, c.head_dim)
        return Tensor.zeros(*shape, dtype=dtypes.float32, device=DEVICE).contiguous().realize()

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        """Float32 embeddings `(T, D)` of token ids (first shard only)."""
        table = self.embedding
        assert table is not None, "only the first shard embeds tokens"
        if isinstance(table, QuantizedTensor):
            rows = QuantizedTensor(table.kind, table.blocks[tokens], (len(tokens), table.shape[1]))
            return rows.dequantize()
        return np.asarray(table[tokens], dtype=np.float32)

    def prefill(self, x: Tensor, cache: Tensor, start: UOp) -> Tensor:
        """Run the layers over T consecutive positions `start..start+T-1` of one request.

        x: `(T, D)`. Rows past the request's real length may be padding: they are
        causally after every real row, so they never change a real row's output.
        """
        for i, w in enumerate(self.layers):

            def attend(q: Tensor, k: Tensor, v: Tensor, i: int = i) -> Tensor:
                return self._attend_prefill(q, k, v, cache, i, start)

            x = self._block(x, w, attend)
        return x

    def decode(self, x: Tensor, caches: list[Tensor], positions: list[UOp]) -> Tensor:
        """One new position for each of B requests: x `(B, D)`, row b at `positions[b]`."""
        for i, w in enumerate(self.layers):

            def attend(q: Tensor, k: Tensor, v: Tensor, i: int = i) -> Tensor:
                rows = [
                    self._attend_prefill(q[b : b + 1], k[b : b + 1], v[b : b + 1], cache, i, pos)
                    for b, (cache, pos) in enumerate(zip(caches, positions, strict=True))
                ]
                return rows[0].cat(*rows[1:]) if len(rows) > 1 else rows[0]

            x = self._block(x, w, attend)
        return x

    def head(self, x: Tensor) -> Tensor:
        """Logits `(B, vocab)` of final hidden states `(B, D)` (last shard only)."""
        assert self.norm is not None and self.head_matrix is not None
        return matmul(_rms_norm(x, self.norm, self.config.rms_norm_eps), self.head_matrix)

    def _block(self, x: Tensor, w: LayerWeights, attend: AttendFn) -> Tensor:
        c = self.config
        rows = x.shape[0]
        h = _rms_norm(x, w.attn_norm, c.rms_norm_eps)
        q = matmul(h, w.q).reshape(rows, c.num_heads, c.head_dim)
        k = matmul(h, w.k).reshape(rows, c.num_kv_heads, c.head_dim)
        v = matmul(h, w.v).reshape(rows, c.num_kv_heads, c.head_dim)
        x = x + matmul(attend(q, k, v), w.o)
        h = _rms_norm(x, w.mlp_norm, c.rms_norm_eps)
        return x + matmul(matmul(h, w.gate).silu() * matmul(h, w.up), w.down)

    def _attend_prefill(
        self, q: Tensor, k: Tensor, v: Tensor, cache: Tensor, layer: int, start: UOp
    ) -> Tensor:
        """Causal attention of T new rows at `start..` over the request's cache: `(T, H*hd)`."""
        c = self.config
        T, group = q.shape[0], c.num_heads // c.num_kv_heads
        cos, sin = self.cos[start : start + T], self.sin[start : start + T]  # (T, hd/2)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        kv = Tensor.stack(k, v).permute(0, 2, 1, 3)  # (2, KV, T, hd)
        store = cache[layer, :, :, start : start + T, :].uop.store(kv.uop)
        cached = Tensor(cache.uop.after(store))[layer, :, :, 0 : start + T, :]  # (2, KV, S, hd)
        keys, values = cached[0].unsqueeze(1), cached[1].unsqueeze(1)  # (KV, 1, S, hd)
        q = q.reshape(T, c.num_kv_heads, group, c.head_dim).permute(1, 2, 0, 3)  # (KV, G, T, hd)
        scores = (q @ keys.transpose(-1, -2)) * (1.0 / c.head_dim**0.5)  # (KV, G, T, S)
        if T > 1:
            # Row i sees positions up to start + i.
            mask = Tensor.full((T, start + T), float("-inf"), device=DEVICE).triu(start + 1)
            scores = scores + mask
        out = scores.softmax(-1) @ values  # (KV, G, T, hd)
        return out.permute(2, 0, 1, 3).reshape(T, c.num_heads * c.head_dim)


def _layer_weights(weights: ShardWeights, index: int) -> LayerWeights:
    def m(suffix: str) -> Matrix:
        return to_matrix(weights.layer(index, suffix))

    def norm(suffix: str) -> Tensor:
        return _vector(weights.dense(f"model.layers.{index}.{suffix}"))

    return LayerWeights(
        attn_norm=norm("input_layernorm.weight"),
        q=m("self_attn.q_proj.weight"),
        k=m("self_attn.k_proj.weight"),
        v=m("self_attn.v_proj.weight"),
        o=m("self_attn.o_proj.weight"),
        mlp_norm=norm("post_attention_layernorm.weight"),
        gate=m("mlp.gate_proj.weight"),
        up=m("mlp.up_proj.weight"),
        down=m("mlp.down_proj.weight"),
    )


def _vector(a: np.ndarray) -> Tensor:
    return Tensor(np.ascontiguousarray(a, dtype=np.float32), device=DEVICE).realize()


def _rope_tables(config: ModelConfig, capacity: int) -> tuple[Tensor, Tensor]:
    """cos and sin `(C, hd/2)` of every position (float64 on the host, then float32)."""
    hd = config.head_dim
    inv_freq = config.rope_theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    angles = np.arange(capacity, dtype=np.float64)[:, None] * inv_freq
    return _vector(np.cos(angles)), _vector(np.sin(angles))


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding, Hugging Face half-split layout: x `(T, heads, hd)`, cos/sin `(T, hd/2)`."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x1 * cos - x2 * sin).cat(x2 * cos + x1 * sin, dim=-1)


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x * (x.square().mean(-1, keepdim=True) + eps).rsqrt() * weight
