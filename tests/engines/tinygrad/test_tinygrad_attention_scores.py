"""The C attention kernel's score options (scale, soft-cap, sliding window) against numpy.

A prefill of T rows and then one decode row, both over the same cache, so the
window is checked where it cuts inside a key block and across calls.
"""

from __future__ import annotations

import numpy as np
import pytest
from tinygrad import Tensor, UOp

from exoquic.engines.tinygrad.custom import AttentionScores, attention, gated_quantize_rows
from exoquic.engines.tinygrad.device import DEVICE

H, KV, HD, C = 4, 2, 16, 32


def reference(qkv: np.ndarray, rope: np.ndarray, scores: AttentionScores) -> np.ndarray:
    """Attention of every row over rows 0..t (float64), as Hugging Face computes it."""
    T = qkv.shape[0]
    q, k, v = np.split(qkv.astype(np.float64), [H * HD, (H + KV) * HD], axis=1)
    cos, sin = rope[:, : HD // 2, None], rope[:, HD // 2 :, None]

    def rotate(x: np.ndarray, heads: int) -> np.ndarray:
        x = x.reshape(T, heads, HD).transpose(0, 2, 1)  # (T, hd, heads)
        a, b = x[:, : HD // 2], x[:, HD // 2 :]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], 1).transpose(0, 2, 1)

    q, k = rotate(q, H), np.repeat(rotate(k, KV), H // KV, axis=1)
    v = np.repeat(v.reshape(T, KV, HD), H // KV, axis=1)
    s = np.einsum("thd,shd->hts", q, k) * scores.scale
    if scores.softcap:
        s = scores.softcap * np.tanh(s / scores.softcap)
    t, j = np.arange(T)[:, None], np.arange(T)[None]
    visible = (j <= t) & (t - j < (scores.window or T + 1))
    s = np.where(visible, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("hts,shd->thd", p, v).reshape(T, H * HD)


def run(qkv: np.ndarray, rope: np.ndarray, scores: AttentionScores, split: int) -> np.ndarray:
    """The kernel over rows 0..split-1 (one call), then each later row alone."""
    cache = Tensor.zeros(2, KV, C, HD, device=DEVICE).contiguous().realize()
    table = Tensor(np.pad(rope, ((0, C - len(rope)), (0, 0))), device=DEVICE).realize()
    outs = []
    for lo, hi in [(0, split), *((i, i + 1) for i in range(split, qkv.shape[0]))]:
        # The kernel reads `start` from the graph: slicing the table with it binds it.
        start = UOp.variable("start", 0, C - (hi - lo)).bind(lo)
        rows = Tensor(qkv[lo:hi], device=DEVICE)
        out = attention(rows, table[start : start + hi - lo], cache, start, H, KV, scores)
        outs.append(out.numpy())
    return np.concatenate(outs)


@pytest.mark.parametrize(
    "scores",
    [
        AttentionScores(0.2),
        AttentionScores(0.2, softcap=1.5),
        AttentionScores(0.2, window=5),
        AttentionScores(0.2, softcap=1.5, window=11),
    ],
    ids=["scale", "softcap", "window", "both"],
)
def test_attention_scores_match_numpy(scores: AttentionScores) -> None:
    rng = np.random.default_rng(3)
    T = 21
    qkv = (2 * rng.standard_normal((T, (H + 2 * KV) * HD))).astype(np.float32)
    angles = np.arange(T)[:, None] * 10000.0 ** (-np.arange(0, HD, 2) / HD)
    rope = np.concatenate([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    want = reference(qkv, rope, scores)
    np.testing.assert_allclose(run(qkv, rope, scores, split=17), want, atol=2e-5, rtol=0)
    # The options must change the result, or the test above proves nothing.
    assert np.abs(want - reference(qkv, rope, AttentionScores(0.2))).max() > 1e-2 or (
        scores == AttentionScores(0.2)
    )


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_gated_quantize_rows_matches_numpy(activation: str) -> None:
    """The gated-MLP kernel's activations, read back from its int16 codes and block scales."""
    rng = np.random.default_rng(4)
    gate_up = (3 * rng.standard_normal((3, 2 * 64))).astype(np.float32)
    codes, sums = gated_quantize_rows(Tensor(gate_up, device=DEVICE), activation)
    scales = sums.numpy()[:, 0, :]  # (R, K/32): d of each block
    got = codes.numpy().astype(np.float64) * np.repeat(scales, 32, axis=1)
    g, u = gate_up[:, :64].astype(np.float64), gate_up[:, 64:]
    if activation == "silu":
        act = g / (1 + np.exp(-g))
    else:  # transformers' gelu_pytorch_tanh
        act = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
    np.testing.assert_allclose(got, act * u, atol=2e-4 * np.abs(act * u).max(), rtol=0)
