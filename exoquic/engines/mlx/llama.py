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
from exoquic.models.rope import inverse_frequencies
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
    num_layers: int  # layers in this shard
    is_first: bool
    is_last: bool

    @classmethod
    def from_config(cls, config: ModelConfig, shard: Shard) -> ModelArgs:
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
            num_layers=shard.layer_count,
            is_first=shard.is_first,
            is_last=shard.is_last,
        )


class RMSNorm(nn.Module):
    def __init__(self, dims: int, eps: float) -> None:
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        d, hd = args.hidden_size, args.head_dim
        self.n_heads = args.num_heads
        self.n_kv_heads = args.num_kv_heads
        self.head_dim = hd
        self.scale = hd**-0.5
        # MLX takes the period of each frequency (1 / inverse frequency); the
        # leading underscore keeps it out of the module's parameters.
        inv_freq = inverse_frequencies(hd, args.rope_theta, args.rope_scaling)
        self._rope_periods = mx.array(1.0 / inv_freq, dtype=mx.float32)
        bias = args.attention_bias
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

    def __call__(self, x: mx.array, caches: list[LayerCache]) -> mx.array:
        B, T, _ = x.shape
        q = self.q_proj(x).reshape(B, T, self.n_heads, -1)  # (B, T, H, hd)
        k = self.k_proj(x).reshape(B, T, self.n_kv_heads, -1)  # (B, T, KV, hd)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3)  # (B, heads, T, hd)
        v = self.v_proj(x).reshape(B, T, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        offset: int | mx.array = caches[0].offset
        if B > 1:
            offset = mx.array([c.offset for c in caches], dtype=mx.int32)
        q, k = self._rope(q, offset), self._rope(k, offset)
        # Rows sit at different positions with caches of different lengths, so
        # attention runs per row; the projections above and the MLP are batched.
        mask = "causal" if T > 1 else None
        rows = []
        for b, cache in enumerate(caches):
            keys, values = cache.update_and_fetch(k[b : b + 1], v[b : b + 1])
            rows.append(
                mx.fast.scaled_dot_product_attention(
                    q[b : b + 1], keys, values, scale=self.scale, mask=mask
                )
            )
        out = rows[0] if B == 1 else mx.concatenate(rows, axis=0)  # (B, H, T, hd)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        d, f = args.hidden_size, args.intermediate_size
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down_proj(nn.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.self_attn = Attention(args)
        self.mlp = MLP(args)
        self.input_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(args.hidden_size, args.rms_norm_eps)

    def __call__(self, x: mx.array, caches: list[LayerCache]) -> mx.array:
        h = x + self.self_attn(self.input_layernorm(x), caches)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    """The HF `model.` prefix: embedding (first shard), layers, norm (last shard)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        if args.is_first:
            self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args) for _ in range(args.num_layers)]
        if args.is_last:
            self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)


class ShardModel(nn.Module):
    """One shard of a llama model.

    `__call__` takes token ids `(B, T)` on the first shard, else hidden states
    `(B, T, D)`, and one list of per-layer caches per batch row. It returns
    hidden states `(B, T, D)`, or on the last shard the logits `(B, vocab)` of
    each row's final position.
    """

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.model = LlamaModel(args)
        self.tied = args.is_first and args.is_last and args.tie_word_embeddings
        if args.is_last and not self.tied:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def __call__(self, inputs: mx.array, caches: list[list[LayerCache]]) -> mx.array:
        # A float16 / bfloat16 embedding must not make the whole pass 16-bit.
        h = self.model.embed_tokens(inputs).astype(mx.float32) if self.args.is_first else inputs
        for i, layer in enumerate(self.model.layers):
            h = layer(h, [row[i] for row in caches])
        if not self.args.is_last:
            return h
        h = self.model.norm(h[:, -1, :])  # (B, D): only the final position is sampled
        if self.tied:
            return self.model.embed_tokens.as_linear(h)
        return self.lm_head(h)


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
