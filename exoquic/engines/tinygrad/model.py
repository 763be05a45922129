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
from tinygrad import Tensor, UOp

from exoquic.engines.tinygrad.custom import (
    AttentionScores,
    attention,
    gated_quantize_rows,
    norm_quantize_rows,
    quantize_rows,
    quantized_matmul,
)
from exoquic.engines.tinygrad.device import DEVICE
from exoquic.engines.tinygrad.matrices import (
    DenseMatrix,
    HostArrays,
    Matrix,
    fuse_rows,
    matmul,
    matrix_key,
    matrix_tensors,
    to_matrix,
    with_tensors,
)
from exoquic.models.affine import AffineTensor
from exoquic.models.config import ModelConfig
from exoquic.models.rope import attention_factor, inverse_frequencies
from exoquic.models.shard import Shard
from exoquic.models.weights import (
    ATTENTION_BIAS_SUFFIXES,
    EMBED_NAME,
    HEAD_NAME,
    NORM_NAME,
    QuantizedTensor,
    ShardWeights,
    WeightArray,
)

# qkv projections of some rows -> attention output `(rows, H*hd)`.
AttendFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Projection:
    """Several weight matrices applied to the same input, fused into one product when possible."""

    matrices: tuple[Matrix, ...]
    sizes: tuple[int, ...]  # output width of each logical matrix

    @classmethod
    def of(cls, parts: list[WeightArray], host: HostArrays) -> Projection:
        sizes = tuple(p.shape[0] for p in parts)
        fused = fuse_rows(parts) if len(parts) > 1 else parts[0]
        if fused is not None:
            return cls((to_matrix(fused, host),), sizes)
        return cls(tuple(to_matrix(p, host) for p in parts), sizes)

    @property
    def quantized(self) -> bool:
        return not any(isinstance(m, DenseMatrix) for m in self.matrices)

    def __call__(self, x: Tensor, fast: bool) -> Tensor:
        """The products of x `(R, cols)`, concatenated: `(R, sum(sizes))`."""
        return _concat([matmul(x, m, fast) for m in self.matrices])

    def of_quantized(self, codes: Tensor, sums: Tensor, residual: Tensor | None = None) -> Tensor:
        """Like `__call__` (fast path, plus `residual`) for activations quantized by `custom`."""
        mats = [m for m in self.matrices if not isinstance(m, DenseMatrix)]
        assert len(mats) == len(self.matrices), "only for quantized projections"
        if residual is not None and len(mats) == 1:
            return quantized_matmul(codes, sums, mats[0], residual)  # added in the kernel
        out = _concat([quantized_matmul(codes, sums, m) for m in mats])
        return out if residual is None else residual + out


@dataclass(frozen=True)
class LayerWeights:
    """One layer's device tensors; the optional ones are the family's features."""

    attn_norm: Tensor
    qkv: Projection
    o: Projection
    mlp_norm: Tensor
    gate_up: Projection
    down: Projection
    qkv_bias: Tensor | None = None  # ((H + 2 KV) hd,): q | k | v biases (qwen2)
    q_norm: Tensor | None = None  # (hd,): per-head RMSNorm of q before RoPE (qwen3)
    k_norm: Tensor | None = None  # (hd,): likewise for k
    attn_out_norm: Tensor | None = None  # (D,): RMSNorm of the attention output (gemma2)
    mlp_out_norm: Tensor | None = None  # (D,): RMSNorm of the MLP output (gemma2)
    window: int | None = None  # positions attended over (gemma2's sliding layers)

    def _projections(self) -> tuple[Projection, ...]:
        return (self.qkv, self.o, self.gate_up, self.down)

    def _maybe(self) -> tuple[Tensor | None, ...]:
        return (self.qkv_bias, self.q_norm, self.k_norm, self.attn_out_norm, self.mlp_out_norm)

    def _optional(self) -> list[Tensor]:
        return [t for t in self._maybe() if t is not None]

    def tensors(self) -> list[Tensor]:
        """Every device tensor of the layer, in a fixed order (see `rebuild`)."""
        out = [self.attn_norm]
        for p in self._projections():
            out += [t for m in p.matrices for t in matrix_tensors(m)]
        return [*out, self.mlp_norm, *self._optional()]

    def structure(self) -> tuple[object, ...]:
        """Equal for layers that one traced computation can serve (shapes, kinds, fusion)."""
        projections = tuple(
            (p.sizes, tuple(matrix_key(m) for m in p.matrices)) for p in self._projections()
        )
        present = tuple(t is not None for t in self._maybe())
        shapes = tuple((tuple(t.shape), t.dtype) for t in self.tensors())
        return projections, present, self.window, shapes

    def rebuild(self, tensors: list[Tensor]) -> LayerWeights:
        """A layer of the same structure made of `tensors` (ordered as `tensors()`)."""
        rest = iter(tensors)
        attn_norm = next(rest)

        def projection(p: Projection) -> Projection:
            mats = tuple(
                with_tensors(m, [next(rest) for _ in matrix_tensors(m)]) for m in p.matrices
            )
            return Projection(mats, p.sizes)

        qkv, o, gate_up, down = (projection(p) for p in self._projections())
        mlp_norm = next(rest)

        def optional(t: Tensor | None) -> Tensor | None:
            return None if t is None else next(rest)

        bias, q_norm, k_norm, attn_out, mlp_out = (optional(t) for t in self._maybe())
        return LayerWeights(
            attn_norm, qkv, o, mlp_norm, gate_up, down,
            qkv_bias=bias, q_norm=q_norm, k_norm=k_norm,
            attn_out_norm=attn_out, mlp_out_norm=mlp_out, window=self.window,
        )  # fmt: skip


class ShardModel:
    """The device weights of one shard and the computations over them.

    fast: attention and quantized products run as the C kernels of `custom`
    (products on int8-quantized activations, like llama.cpp); otherwise every
    kernel is tinygrad-generated with float32 activations (slow, closest to a
    float reference, and not tied to the CPU device).
    """

    def __init__(
        self, weights: ShardWeights, capacity: int, fast: bool, context: int | None = None
    ) -> None:
        """context: the positions the engine serves (default: capacity); longrope
        scaling picks its factors by it."""
        self.config: ModelConfig = weights.config
        self.shard: Shard = weights.shard
        self.capacity = capacity
        self.fast = fast
        self.host = HostArrays()  # the memory behind every weight tensor
        self.layers = [_layer_weights(weights, i, self.host) for i in self.shard.layers()]
        # Embedding rows are looked up on the host: T rows per step are cheap to decode.
        self.embedding: WeightArray | None = (
            weights.tensors[EMBED_NAME] if self.shard.is_first else None
        )
        self.norm: Tensor | None = None
        self.head_matrix: Projection | None = None
        if self.shard.is_last:
            norm = weights.dense(NORM_NAME) + self.config.norm_weight_offset
            self.norm = self.host.tensor(norm)
            self.head_matrix = Projection.of([weights.tensors[HEAD_NAME]], self.host)
        rope = _rope_table(self.config, capacity, context or capacity)  # (C, hd): cos | sin
        self.rope = self.host.tensor(rope)

    def new_cache(self, memory: HostArrays) -> list[Tensor]:
        """Zeroed KV caches for one request, per layer `(2, KV, C, hd)` float32, in `memory`.

        Pages are only backed by memory once positions are written.
        """
        c = self.config
        shape = (2, c.num_kv_heads, self.capacity, c.head_dim)
        return [memory.zeros(shape) for _ in self.layers]

    def embed(self, tokens: np.ndarray) -> np.ndarray:
        """Float32 embeddings `(T, D)` of token ids (first shard only)."""
        table = self.embedding
        assert table is not None, "only the first shard embeds tokens"
        if isinstance(table, AffineTensor):
            return table.take_rows(tokens).dequantize()
        if isinstance(table, QuantizedTensor):
            rows = QuantizedTensor(table.kind, table.blocks[tokens], (len(tokens), table.shape[1]))
            embedded = rows.dequantize()
        else:
            embedded = np.asarray(table[tokens], dtype=np.float32)
        multiplier = self.config.embedding_multiplier
        return embedded if multiplier == 1.0 else embedded * np.float32(multiplier)

    def layer(
        self, x: Tensor, w: LayerWeights, caches: list[Tensor], positions: list[UOp]
    ) -> Tensor:
        """One layer over the new rows of B requests.

        x `(rows, D)`: request b owns `rows / B` consecutive rows, starting at position
        `positions[b]`, and this layer's cache `caches[b]`. In a prefill (B = 1) rows
        past the request's real length may be padding: they come causally after every
        real row, so they never change a real row's output.
        """
        per = x.shape[0] // len(caches)

        def attend(qkv: Tensor) -> Tensor:
            outs = [
                self._attend(
                    qkv[b * per : (b + 1) * per], self.rope[p : p + per], caches[b], p, w.window
                )
                for b, p in enumerate(positions)
            ]
            return outs[0].cat(*outs[1:]) if len(outs) > 1 else outs[0]

        return self._block(x, w, attend)

    def head(self, x: Tensor) -> Tensor:
        """Logits `(B, vocab)` of final hidden states `(B, D)` (last shard only)."""
        assert self.norm is not None and self.head_matrix is not None
        logits = self._normed(self.head_matrix, x, self.norm)
        cap = self.config.final_logit_softcapping
        return logits if cap is None else (logits / cap).tanh() * cap

    def _block(self, x: Tensor, w: LayerWeights, attend: AttendFn) -> Tensor:
        attn = attend(self._qkv(x, w))
        x = self._residual(x, w.o, attn, None, w.attn_out_norm)
        gate_up = self._normed(w.gate_up, x, w.mlp_norm)  # (rows, 2F): gate | up
        return self._residual(x, w.down, gate_up, self.config.hidden_act, w.mlp_out_norm)

    def _residual(
        self, x: Tensor, p: Projection, inputs: Tensor, gated: str | None, out_norm: Tensor | None
    ) -> Tensor:
        """`x + p(inputs)`, or with `gated` (the MLP's activation) `x + p(act(gate) * up)`
        for inputs gate | up; the product is normalised by `out_norm` first if there is
        one. Without an output norm the fast path adds x inside the product's kernel."""
        if self.fast and p.quantized:
            codes = gated_quantize_rows(inputs, gated) if gated else quantize_rows(inputs)
            if out_norm is None:
                return p.of_quantized(*codes, residual=x)
            out = p.of_quantized(*codes)
        else:
            out = p(_gated(inputs, gated) if gated else inputs, self.fast)
        if out_norm is not None:
            out = _rms_norm(out, out_norm, self.config.rms_norm_eps)
        return x + out

    def _qkv(self, x: Tensor, w: LayerWeights) -> Tensor:
        """The q | k | v projections `(rows, (H + 2 KV) hd)` with the family's extras."""
        qkv = self._normed(w.qkv, x, w.attn_norm)
        if w.qkv_bias is not None:
            qkv = qkv + w.qkv_bias
        if w.q_norm is None or w.k_norm is None:
            return qkv
        c = self.config
        rows, hd = qkv.shape[0], c.head_dim
        q, k, v = qkv.split([c.num_heads * hd, c.num_kv_heads * hd, c.num_kv_heads * hd], dim=-1)
        q = _rms_norm(q.reshape(rows, c.num_heads, hd), w.q_norm, c.rms_norm_eps)
        k = _rms_norm(k.reshape(rows, c.num_kv_heads, hd), w.k_norm, c.rms_norm_eps)
        return q.reshape(rows, -1).cat(k.reshape(rows, -1), v, dim=-1)

    def _normed(self, p: Projection, x: Tensor, weight: Tensor) -> Tensor:
        """`p(rms_norm(x) * weight)`; in the fast path norm and quantization are one kernel."""
        eps = self.config.rms_norm_eps
        if self.fast and p.quantized:
            return p.of_quantized(*norm_quantize_rows(x, weight, eps))
        return p(_rms_norm(x, weight, eps), self.fast)

    def _attend(
        self, qkv: Tensor, rope: Tensor, cache: Tensor, start: UOp, window: int | None
    ) -> Tensor:
        """Causal attention of T new rows at `start..` over the request's layer cache.

        qkv: `(T, (H + 2 KV) hd)`; rope: `(T, hd)` cos | sin; cache `(2, KV, C, hd)`;
        window: a row sees only its last `window` positions (None: all).
        Returns `(T, H*hd)` and stores the rows' keys and values into the cache.
        """
        c = self.config
        cap = c.attn_logit_softcapping
        if self.fast:
            options = AttentionScores(c.attention_scale, cap, window)
            return attention(qkv, rope, cache, start, c.num_heads, c.num_kv_heads, options)
        T, hd, group = qkv.shape[0], c.head_dim, c.num_heads // c.num_kv_heads
        q, k, v = qkv.split([c.num_heads * hd, c.num_kv_heads * hd, c.num_kv_heads * hd], dim=-1)
        cos, sin = rope[:, : hd // 2], rope[:, hd // 2 :]
        q = _rope(q.reshape(T, c.num_heads, hd), cos, sin)
        k = _rope(k.reshape(T, c.num_kv_heads, hd), cos, sin)
        kv = Tensor.stack(k, v.reshape(T, c.num_kv_heads, hd)).permute(0, 2, 1, 3)  # (2, KV, T, hd)
        store = cache[:, :, start : start + T, :].uop.store(kv.uop)
        cached = Tensor(cache.uop.after(store))[:, :, 0 : start + T, :]  # (2, KV, S, hd)
        keys, values = cached[0].unsqueeze(1), cached[1].unsqueeze(1)  # (KV, 1, S, hd)
        q = q.reshape(T, c.num_kv_heads, group, hd).permute(1, 2, 0, 3)  # (KV, G, T, hd)
        scores = (q @ keys.transpose(-1, -2)) * c.attention_scale  # (KV, G, T, S)
        if cap is not None:
            scores = (scores / cap).tanh() * cap
        if T > 1:
            # Row i sees positions up to start + i.
            mask = Tensor.full((T, start + T), float("-inf"), device=DEVICE).triu(start + 1)
            scores = scores + mask
        if window is not None:
            # ... and none before start + i - window + 1.
            far = Tensor.full((T, start + T), float("-inf"), device=DEVICE).tril(start - window)
            scores = scores + far
        out = scores.softmax(-1) @ values  # (KV, G, T, hd)
        return out.permute(2, 0, 1, 3).reshape(T, c.num_heads * hd)


def _layer_weights(weights: ShardWeights, index: int, host: HostArrays) -> LayerWeights:
    def p(*suffixes: str) -> Projection:
        return Projection.of([weights.layer(index, s) for s in suffixes], host)

    def vector(*suffixes: str) -> Tensor:
        return host.tensor(np.concatenate([weights.layer_dense(index, s) for s in suffixes]))

    config = weights.config

    def norm(suffix: str) -> Tensor:  # gemma2's norms multiply by (1 + weight)
        return host.tensor(weights.layer_dense(index, suffix) + config.norm_weight_offset)

    if config.fused_projections:  # phi3: one matrix each, rows q | k | v and gate | up
        qkv, gate_up = p("self_attn.qkv_proj.weight"), p("mlp.gate_up_proj.weight")
    else:
        qkv = p("self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight")
        gate_up = p("mlp.gate_proj.weight", "mlp.up_proj.weight")
    # gemma2's MLP input norm is `pre_feedforward_layernorm`; its post_attention_layernorm
    # normalises the attention output.
    sandwich = config.sandwich_norms
    mlp_norm = "pre_feedforward_layernorm" if sandwich else "post_attention_layernorm"
    return LayerWeights(
        attn_norm=norm("input_layernorm.weight"),
        qkv=qkv,
        o=p("self_attn.o_proj.weight"),
        mlp_norm=norm(f"{mlp_norm}.weight"),
        gate_up=gate_up,
        down=p("mlp.down_proj.weight"),
        qkv_bias=vector(*ATTENTION_BIAS_SUFFIXES) if config.attention_bias else None,
        q_norm=vector("self_attn.q_norm.weight") if config.qk_norm else None,
        k_norm=vector("self_attn.k_norm.weight") if config.qk_norm else None,
        attn_out_norm=norm("post_attention_layernorm.weight") if sandwich else None,
        mlp_out_norm=norm("post_feedforward_layernorm.weight") if sandwich else None,
        window=config.window_of(index),
    )


def _concat(parts: list[Tensor]) -> Tensor:
    return parts[0] if len(parts) == 1 else parts[0].cat(*parts[1:], dim=-1)


def _rope_table(config: ModelConfig, capacity: int, context: int) -> np.ndarray:
    """cos | sin `(C, hd)` of every position (computed in float64, stored as float32).

    Both are multiplied by the scaling's attention factor (longrope), as in
    Hugging Face, so q and k each carry it.
    """
    scaling = config.rope_scaling
    inv_freq = inverse_frequencies(config.head_dim, config.rope_theta, scaling, context)
    angles = np.arange(capacity, dtype=np.float64)[:, None] * inv_freq
    table = np.concatenate([np.cos(angles), np.sin(angles)], axis=1) * attention_factor(scaling)
    return table.astype(np.float32)


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding, Hugging Face half-split layout: x `(T, heads, hd)`, cos/sin `(T, hd/2)`."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return (x1 * cos - x2 * sin).cat(x2 * cos + x1 * sin, dim=-1)


def _gated(gate_up: Tensor, activation: str) -> Tensor:
    """act(gate) * up for gate_up `(rows, 2F)`; tinygrad's gelu is the tanh approximation."""
    gate, up = gate_up.chunk(2, dim=-1)
    return (gate.silu() if activation == "silu" else gate.gelu()) * up


def _rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return x * (x.square().mean(-1, keepdim=True) + eps).rsqrt() * weight
