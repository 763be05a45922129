"""GGML blocks repacked for MLX dequantize bit-exactly and multiply correctly."""

from __future__ import annotations

import gguf
import mlx.core as mx
import numpy as np
import pytest
from engines.mlx.affine import mlx_dequantize

from exoquic.engines.mlx.ggml_pack import GROUP_SIZE, is_mappable, to_affine
from exoquic.models.quant import GGML_TYPES
from exoquic.models.weights import QuantizedTensor, QuantKind

KINDS: list[QuantKind] = ["q4_0", "q4_1", "q8_0"]


def quantized(kind: QuantKind, rows: int, cols: int, seed: int = 0) -> QuantizedTensor:
    rng = np.random.default_rng(seed)
    # Rows with different ranges and offsets exercise scales and Q4_1's minimum.
    dense = rng.standard_normal((rows, cols)) * rng.uniform(0.01, 3, (rows, 1))
    dense += rng.uniform(-1, 1, (rows, 1))
    blocks = gguf.quants.quantize(dense.astype(np.float32), GGML_TYPES[kind])
    return QuantizedTensor(kind=kind, blocks=blocks, shape=(rows, cols))


@pytest.mark.parametrize("kind", KINDS)
def test_mlx_dequantize_is_bit_exact(kind: QuantKind) -> None:
    t = quantized(kind, 48, 192)
    assert np.array_equal(mlx_dequantize(t), t.dequantize())


@pytest.mark.parametrize("kind", KINDS)
def test_quantized_matmul_matches_dense(kind: QuantKind) -> None:
    t = quantized(kind, 64, 128, seed=1)
    p = to_affine(t)
    x = np.random.default_rng(2).standard_normal((5, 128)).astype(np.float32)
    out = mx.quantized_matmul(
        mx.array(x),
        mx.array(p.weight),
        mx.array(p.scales),
        mx.array(p.biases),
        transpose=True,
        group_size=GROUP_SIZE,
        bits=p.bits,
    )
    # Only the summation order differs from float32 numpy.
    np.testing.assert_allclose(np.array(out), x @ t.dequantize().T, rtol=1e-5, atol=1e-4)


def test_layout_and_dtypes() -> None:
    p4 = to_affine(quantized("q4_1", 8, 64))
    assert (p4.bits, p4.weight.dtype, p4.weight.shape) == (4, np.uint32, (8, 8))
    assert p4.scales.dtype == p4.biases.dtype == np.float32
    assert p4.scales.shape == (8, 2)
    p8 = to_affine(quantized("q8_0", 8, 64))
    assert (p8.bits, p8.weight.shape) == (8, (8, 16))


def test_mismatched_blocks_are_rejected() -> None:
    t = QuantizedTensor(kind="q4_1", blocks=np.zeros((4, 20), np.uint8), shape=(4, 64))
    with pytest.raises(ValueError, match="do not encode"):
        to_affine(t)


def test_unmappable_shape_is_reported() -> None:
    t = QuantizedTensor(kind="q8_0", blocks=np.zeros((4, 34), np.uint8), shape=(4, 33))
    assert not is_mappable(t)
    with pytest.raises(ValueError, match="cannot map"):
        to_affine(t)
