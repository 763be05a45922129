"""A plain numpy forward pass of one llama shard: the oracle for engine tests.

Stateless and float64: it recomputes the whole sequence with a causal mask, so
it shares no code or cache logic with the engines it checks. Weights come from
`ShardWeights.dense`, so quantized matrices are dequantized exactly as every
engine must reproduce them.
"""

from __future__ import annotations

import numpy as np

from exoquic.models.weights import EMBED_NAME, HEAD_NAME, NORM_NAME, ShardWeights


def reference_forward(weights: ShardWeights, inputs: np.ndarray) -> np.ndarray:
    """Run the shard's layers over a whole sequence starting at position 0.

    inputs: int token ids `(T,)` on the first shard, else hidden states `(T, D)`.
    Returns float32 hidden states `(T, D)`, or on the last shard the logits of
    every position `(T, vocab)` (engines return only the last row).
    """
    config, shard = weights.config, weights.shard
    if shard.is_first:
        x = weights.dense(EMBED_NAME).astype(np.float64)[np.asarray(inputs)]
    else:
        x = np.asarray(inputs, dtype=np.float64)
    for layer in shard.layers():
        x = _layer(weights, layer, x)
    if shard.is_last:
        x = _rms_norm(x, weights.dense(NORM_NAME), config.rms_norm_eps)
        x = x @ weights.dense(HEAD_NAME).T
    return x.astype(np.float32)


def _layer(weights: ShardWeights, layer: int, x: np.ndarray) -> np.ndarray:
    c = weights.config

    def w(suffix: str) -> np.ndarray:
        return weights.dense(f"model.layers.{layer}.{suffix}").astype(np.float64)

    T = x.shape[0]
    h = _rms_norm(x, w("input_layernorm.weight"), c.rms_norm_eps)
    q = (h @ w("self_attn.q_proj.weight").T).reshape(T, c.num_heads, c.head_dim)
    k = (h @ w("self_attn.k_proj.weight").T).reshape(T, c.num_kv_heads, c.head_dim)
    v = (h @ w("self_attn.v_proj.weight").T).reshape(T, c.num_kv_heads, c.head_dim)
    q, k = _rope(q, c.rope_theta), _rope(k, c.rope_theta)
    # Grouped-query attention: query head i reads kv head i // group.
    group = c.num_heads // c.num_kv_heads
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(c.head_dim)  # (H, T, T)
    scores = np.where(np.tril(np.ones((T, T), dtype=bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attn = np.einsum("hqk,khd->qhd", probs, v).reshape(T, c.num_heads * c.head_dim)
    x = x + attn @ w("self_attn.o_proj.weight").T
    h = _rms_norm(x, w("post_attention_layernorm.weight"), c.rms_norm_eps)
    gate, up = h @ w("mlp.gate_proj.weight").T, h @ w("mlp.up_proj.weight").T
    return x + (gate / (1 + np.exp(-gate)) * up) @ w("mlp.down_proj.weight").T


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rope(x: np.ndarray, theta: float) -> np.ndarray:
    """Rotary embedding in the Hugging Face half-split layout; x is `(T, heads, head_dim)`."""
    T, _, hd = x.shape
    inv_freq = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)  # (hd/2,)
    angles = np.arange(T, dtype=np.float64)[:, None] * inv_freq  # (T, hd/2)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
