"""A shard of a llama-shaped decoder in MLX, in the style of mlx-lm's `models/llama.py`.

Every family in `exoquic.models.architectures` is this decoder with some of
the `ModelConfig` features turned on (`attention_bias`: qwen2; `qk_norm`:
qwen3), so the pieces below are composed by feature rather than copied per
family. Attribute names mirror the Hugging Face weight keys (`self_attn.q_proj`,
`mlp.gate_proj`, `input_layernorm`...), so loading a `ShardWeights` is a
renaming of global layer indices to local ones (see `sanitize`). Unlike
mlx-lm's model, a shard holds only its own layers: the first shard embeds, the
last applies the final norm and the output head, and each batch row carries
its own KV cache so that decode steps of different requests (at different
positions) run as one batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from exoquic.engines.mlx.cache import LayerCache
from exoquic.models.config import ModelConfig, RopeScaling
from exoquic.models.rope import attention_factor, inverse_frequencies
from exoquic.models.shard import Shard


@dataclass(frozen=True)
class ModelArgs:
    """What the forward pass needs from a `ModelConfig` and a `Shard`."""

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rope_theta: float
    rope_scaling: RopeScaling | None
    rms_norm_eps: float
    tie_word_embeddings: bool
    attention_bias: bool
    qk_norm: bool
    fused_projections: bool
    norm_weight_offset: float
    embedding_multiplier: float
    hidden_act: str
    sandwich_norms: bool
    attention_scale: float
    attn_logit_softcapping: float | None
    final_logit_softcapping: float | None
    windows: tuple[int | None, ...]  # each of this shard's layers' sliding window
    context: int  # positions the engine serves (longrope picks its factors by it)
    num_layers: int  # layers in this shard
    is_first: bool
    is_last: bool

    @classmethod
    def from_config(cls, config: ModelConfig, shard: Shard, context: int) -> ModelArgs:
        return cls(
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_heads=config.num_heads,
            num_kv_heads=config.num_kv_heads,
            head_dim=config.head_dim,
            vocab_size=config.vocab_size,
            rope_theta=config.rope_theta,
            rope_scaling=config.rope_scaling,
            rms_norm_eps=config.rms_norm_eps,
            tie_word_embeddings=config.tie_word_embeddings,
            attention_bias=config.attention_bias,
            qk_norm=config.qk_norm,
            fused_projections=config.fused_projections,
            norm_weight_offset=config.norm_weight_offset,
            embedding_multiplier=config.embedding_multiplier,
            hidden_act=config.hidden_act,
            sandwich_norms=config.sandwich_norms,
            attention_scale=config.attention_scale,
            attn_logit_softcapping=config.attn_logit_softcapping,
            final_logit_softcapping=config.final_logit_softcapping,
            windows=tuple(config.window_of(i) for i in shard.layers()),
            context=context,
            num_layers=shard.layer_count,
            is_first=shard.is_first,
            is_last=shard.is_last,
        )


class RMSNorm(nn.Module):
    """RMSNorm multiplying by (offset + weight): offset 1 for gemma2, else 0."""

    def __init__(self, dims: int, eps: float, offset: float = 0.0) -> None:
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps
        self.offset = offset

    def __call__(self, x: mx.array) -> mx.array:
        weight = self.weight + self.offset if self.offset else self.weight
        return mx.fast.rms_norm(x, weight, self.eps)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, window: int | None) -> None:
        super().__init__()
        d, hd = args.hidden_size, args.head_dim
        self.n_heads = args.num_heads
        self.n_kv_heads = args.num_kv_heads
        self.head_dim = hd
        # Longrope's attention factor multiplies cos and sin, so q.k by its square.
        self.scale = args.attention_scale * attention_factor(args.rope_scaling) ** 2
        self.softcap = args.attn_logit_softcapping
        self.window = window
        # MLX takes the period of each frequency (1 / inverse frequency); the
        # leading underscore keeps it out of the module's parameters.
        inv_freq = inverse_frequencies(hd, args.rope_theta, args.rope_scaling, args.context)
        self._rope_periods = mx.array(1.0 / inv_freq, dtype=mx.float32)
        bias = args.attention_bias
        self.fused = args.fused_projections
        if self.fused:  # phi3: rows q | k | v
            self.qkv_proj = nn.Linear(d, (self.n_heads + 2 * self.n_kv_heads) * hd, bias=False)
        else:
            self.q_proj = nn.Linear(d, self.n_heads * hd, bias=bias)
            self.k_proj = nn.Linear(d, self.n_kv_heads * hd, bias=bias)
            self.v_proj = nn.Linear(d, self.n_kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * hd, d, bias=False)
        self.qk_norm = args.qk_norm
        if args.qk_norm:  # qwen3: each head's q and k normalised before RoPE
            self.q_norm = RMSNorm(hd, args.rms_norm_eps)
            self.k_norm = RMSNorm(hd, args.rms_norm_eps)

    def _rope(self, x: mx.array, offset: int | mx.array) -> mx.array:
        # traditional=False: HF weights rotate the two halves of each head.
        return mx.fast.rope(
            x,
            self.head_dim,
            traditional=False,
            base=None,
            scale=1.0,
            offset=offset,
            freqs=self._rope_periods,
        )

    def _project(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array]:
        """q, k, v `(B, T, heads, hd)`."""
        B, T, _ = x.shape
        if self.fused:
            split = [self.n_heads * self.head_dim, (self.n_heads + self.n_kv_heads) * self.head_dim]
            q, k, v = mx.split(self.qkv_proj(x), split, axis=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        heads = (self.n_heads, self.n_kv_heads, self.n_kv_heads)
        q, k, v = (a.reshape(B, T, n, -1) for a, n in zip((q, k, v), heads, strict=True))
        return q, k, v

    def _attend(self, q: mx.array, keys: mx.array, values: mx.array, start: int) -> mx.array:
        """One row's attention `(1, H, T, hd)` over its cache; `start`: q's first position."""
        T = q.shape[2]
        if self.softcap is None and (self.window is None or start + T <= self.window):
            mask = "causal" if T > 1 else None
            return mx.fast.scaled_dot_product_attention(
                q, keys, values, scale=self.scale, mask=mask
            )
        # Soft-capping and windows are not in MLX's fused kernel (as in mlx-lm's gemma2).
        group = self.n_heads // self.n_kv_heads
        q = q.reshape(1, self.n_kv_heads, group, T, self.head_dim) * self.scale
        scores = q @ mx.expand_dims(keys, 2).swapaxes(-1, -2)  # (1, KV, G, T, S)
        if self.softcap is not None:
            scores = mx.tanh(scores / self.softcap) * self.softcap
        q_pos = mx.arange(start, start + T)[:, None]
        k_pos = mx.arange(keys.shape[2])[None]
        visible = k_pos <= q_pos
        if self.window is not None:
            visible = visible & (q_pos - k_pos < self.window)
        scores = mx.where(visible, scores, mx.array(-mx.inf, scores.dtype))
        out = mx.softmax(scores, axis=-1, precise=True) @ mx.expand_dims(values, 2)
        return out.reshape(1, self.n_heads, T, self.head_dim)

    def __call__(self, x: mx.array, caches: list[LayerCache]) -> mx.array:
        B, T, _ = x.shape
        q, k, v = self._project(x)  # (B, T, heads, hd)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (a.transpose(0, 2, 1, 3) for a in (q, k, v))  # (B, heads, T, hd)
        offset: int | mx.array = caches[0].offset
        if B > 1:
            offset = mx.array([c.offset for c in caches], dtype=mx.int32)
        q, k = self._rope(q, offset), self._rope(k, offset)
        # Rows sit at different positions with caches of different lengths, so
        # attention runs per row; the projections above and the MLP are batched.
        rows = []
        for b, cache in enumerate(caches):
            start = cache.offset
            keys, values = cache.update_and_fetch(k[b : b + 1], v[b : b + 1])
            rows.append(self._attend(q[b : b + 1], keys, values, start))
        out = rows[0] if B == 1 else mx.concatenate(rows, axis=0)  # (B, H, T, hd)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, T, -1))


ACTIVATIONS = {"silu": nn.silu, "gelu_tanh": nn.gelu_approx}  # gelu_approx: the tanh form


class MLP(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        d, f = args.hidden_size, args.intermediate_size
        self.act = ACTIVATIONS[args.hidden_act]
        self.fused = args.fused_projections
        if self.fused:  # phi3: rows gate | up
            self.gate_up_proj = nn.Linear(d, 2 * f, bias=False)
        else:
            self.gate_proj = nn.Linear(d, f, bias=False)
            self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        if self.fused:
            gate, up = mx.split(self.gate_up_proj(x), 2, axis=-1)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(self.act(gate) * up)


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, window: int | None) -> None:
        super().__init__()
        self.self_attn = Attention(args, window)
        self.mlp = MLP(args)

        def norm() -> RMSNorm:
            return RMSNorm(args.hidden_size, args.rms_norm_eps, args.norm_weight_offset)

        self.input_layernorm = norm()
        self.post_attention_layernorm = norm()
        self.sandwich = args.sandwich_norms
        if self.sandwich:  # gemma2: the outputs of attention and MLP are normalised too
            self.pre_feedforward_layernorm = norm()
            self.post_feedforward_layernorm = norm()

    def __call__(self, x: mx.array, caches: list[LayerCache]) -> mx.array:
        attn = self.self_attn(self.input_layernorm(x), caches)
        if not self.sandwich:
            h = x + attn
            return h + self.mlp(self.post_attention_layernorm(h))
        h = x + self.post_attention_layernorm(attn)
        return h + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(h)))


class LlamaModel(nn.Module):
    """The HF `model.` prefix: embedding (first shard), layers, norm (last shard)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        if args.is_first:
            self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args, window) for window in args.windows]
        if args.is_last:
            self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps, args.norm_weight_offset)


class ShardModel(nn.Module):
    """One shard of a llama model.

    `__call__` takes token ids `(B, T)` on the first shard, else hidden states
    `(B, T, D)`, and one list of per-layer caches per batch row. It returns
    hidden states `(B, T, D)`, or on the last shard the logits `(B, vocab)` of
    each row's final position (with `all_positions`, `(B, T, vocab)`).
    """

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.model = LlamaModel(args)
        self.tied = args.is_first and args.is_last and args.tie_word_embeddings
        if args.is_last and not self.tied:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def __call__(
        self, inputs: mx.array, caches: list[list[LayerCache]], all_positions: bool = False
    ) -> mx.array:
        h = self._embed(inputs) if self.args.is_first else inputs
        for i, layer in enumerate(self.model.layers):
            h = layer(h, [row[i] for row in caches])
        if not self.args.is_last:
            return h
        # (B, D): only the final position is sampled, unless a prompt is scored (B, T, D)
        h = self.model.norm(h if all_positions else h[:, -1, :])
        logits = self.model.embed_tokens.as_linear(h) if self.tied else self.lm_head(h)
        cap = self.args.final_logit_softcapping
        return logits if cap is None else mx.tanh(logits / cap) * cap

    def _embed(self, tokens: mx.array) -> mx.array:
        # A float16 / bfloat16 embedding must not make the whole pass 16-bit.
        h = self.model.embed_tokens(tokens).astype(mx.float32)
        multiplier = self.args.embedding_multiplier
        return h if multiplier == 1.0 else h * multiplier


def sanitize(weights: dict[str, Any], shard: Shard, tied: bool) -> dict[str, Any]:
    """Rename HF keys with global layer indices to this shard's local modules."""
    out = {}
    prefix = "model.layers."
    for name, value in weights.items():
        if name.startswith(prefix):
            index, rest = name[len(prefix) :].split(".", 1)
            name = f"{prefix}{int(index) - shard.start_layer}.{rest}"
        elif tied and name.startswith("lm_head."):
            continue  # the head reuses the embedding
        out[name] = value
    return out
