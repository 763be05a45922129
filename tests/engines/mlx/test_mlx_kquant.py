"""K-quants and 5-bit blocks on MLX: exact affine groups where MLX allows, Q6_K's documented
rounding, and a Q4_K_M-like llama run by MLXEngine against the float64 reference."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from engines.block_model import PROMPT, weights
from engines.mlx.affine import mlx_dequantize
from engines.reference import reference_forward
from models.ggml_blocks import ALL_KINDS, random_blocks

from exoquic.engines.mlx.engine import MLXEngine
from exoquic.engines.mlx.ggml_codes import affine_groups
from exoquic.engines.mlx.ggml_pack import EXACT_KINDS, pack_codes, to_affine
from exoquic.models.weights import (
    EMBED_NAME,
    HEAD_NAME,
    QuantizedTensor,
    QuantKind,
    ShardWeights,
)

BLOCK_KINDS = [k for k in ALL_KINDS if k not in ("f16", "bf16")]


@pytest.mark.parametrize("kind", BLOCK_KINDS)
def test_affine_groups_decode_like_gguf(kind: QuantKind) -> None:
    t = random_blocks(kind, 6, 512, seed=2)
    groups = affine_groups(t)
    if kind == "q6_k":  # (d*sc)*q + bias rounds where gguf's (d*sc)*(q-32) does not
        np.testing.assert_allclose(groups.dequantize(), t.dequantize(), rtol=1e-6, atol=1e-6)
    else:
        assert np.array_equal(groups.dequantize(), t.dequantize())


@pytest.mark.parametrize("kind", sorted(EXACT_KINDS))
def test_mlx_dequantizes_bit_exactly(kind: QuantKind) -> None:
    t = random_blocks(kind, 8, 512, seed=3)
    assert np.array_equal(mlx_dequantize(t), t.dequantize())


def test_q4_k_and_q5_k_become_4_and_5_bit_groups_of_32() -> None:
    assert to_affine(random_blocks("q4_k", 2, 256)).bits == 4
    p5 = to_affine(random_blocks("q5_k", 2, 256))
    assert (p5.bits, p5.weight.shape, p5.scales.shape) == (5, (2, 40), (2, 8))


def test_q6_k_keeps_the_larger_sub_block_and_rounds_the_other_within_an_eighth_step() -> None:
    t = random_blocks("q6_k", 16, 512, seed=4)
    exact = t.dequantize().reshape(16, -1, 2, 16)
    got = mlx_dequantize(t).reshape(16, -1, 2, 16)
    p = to_affine(t)
    assert p.bits == 8
    step = np.abs(p.scales).reshape(16, -1, 1, 1)
    sub_scales = np.abs(affine_groups(t).scales).reshape(16, -1, 2)
    larger = sub_scales.argmax(axis=2)[..., None, None] == np.arange(2)[:, None]
    assert np.array_equal(np.where(larger, got, 0), np.where(larger, exact, 0))
    assert (np.abs(got - exact) <= step / 2 * (1 + 1e-6)).all()
    assert (np.abs(got - exact)).max() > 0  # random scales: some values did round


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_codes_pack_as_mlx_reads_them(bits: int) -> None:
    codes = np.random.default_rng(bits).integers(0, 2**bits, (3, 128), dtype=np.uint8)
    ones, zeros = mx.ones((3, 4)), mx.zeros((3, 4))
    out = mx.dequantize(mx.array(pack_codes(codes, bits)), ones, zeros, group_size=32, bits=bits)
    assert np.array_equal(np.array(out), codes.astype(np.float32))


def as_mlx_sees_it(w: ShardWeights) -> ShardWeights:
    """The weights with Q6_K replaced by the float32 values MLX computes on."""
    tensors = {
        name: mlx_dequantize(t) if isinstance(t, QuantizedTensor) and t.kind == "q6_k" else t
        for name, t in w.tensors.items()
    }
    return ShardWeights(w.config, w.shard, tensors)


def test_block_quantized_model_matches_the_reference() -> None:
    w = weights()  # Q4_K, Q5_K, Q6_K, Q5_0, Q5_1 matrices, a Q6_K embedding
    engine = MLXEngine(max_context=128)
    engine.load(w)
    engine.forward("r", PROMPT[:-1])
    logits = engine.forward("r", PROMPT[-1:])
    expected = reference_forward(as_mlx_sees_it(w), PROMPT)[-1]
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(logits, expected, atol=1e-4 * scale, rtol=0)
    # Against GGML's exact weights, Q6_K's rounding shows, but stays small.
    exact = reference_forward(w, PROMPT)[-1]
    assert float(np.abs(logits - exact).max()) < 0.05 * scale


@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_half_precision_matrices_stay_16_bit(kind: QuantKind) -> None:
    w = weights()
    for name, t in list(w.tensors.items()):
        if isinstance(t, QuantizedTensor) and name != HEAD_NAME:
            rows, cols = t.shape
            w.tensors[name] = random_blocks(kind, rows, cols, seed=len(name), scale=cols**-0.5)
    w.tensors[HEAD_NAME] = w.tensors[EMBED_NAME]  # tied
    engine = MLXEngine(max_context=128)
    engine.load(w)
    assert engine._model is not None
    dtype = mx.float16 if kind == "f16" else mx.bfloat16
    assert engine._model.model.layers[0].mlp.up_proj.weight.dtype == dtype
    logits = engine.forward("r", PROMPT)
    expected = reference_forward(w, PROMPT)[-1]
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected, atol=1e-4 * float(np.abs(expected).max()), rtol=0)
