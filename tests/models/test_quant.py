"""Dequantization is bit-exact with the `gguf` package for every kept format."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from models.ggml_blocks import ALL_KINDS, random_blocks

from exoquic.models.quant import BLOCK_BYTES, GGML_TYPES, VALUES_PER_BLOCK, quant_kind
from exoquic.models.weights import QuantizedTensor, QuantKind


@pytest.mark.parametrize("kind", ["q4_0", "q4_1", "q5_0", "q5_1", "q8_0"])
def test_dequantize_round_trips_gguf_quantize(kind: QuantKind) -> None:
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((48, 128)).astype(np.float32)
    blocks = gguf.quants.quantize(dense, GGML_TYPES[kind])
    assert blocks.shape == (48, 128 // 32 * BLOCK_BYTES[kind])
    out = QuantizedTensor(kind=kind, blocks=blocks, shape=(48, 128)).dequantize()
    assert out.dtype == np.float32 and out.shape == (48, 128)
    # Quantization is lossy but close: catches a wrong block layout.
    assert np.max(np.abs(out - dense)) < 0.5


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_dequantize_random_blocks_matches_gguf(kind: QuantKind) -> None:
    t = random_blocks(kind, 6, 512, seed=1)
    out = t.dequantize()
    ref = gguf.quants.dequantize(t.blocks, GGML_TYPES[kind]).reshape(6, 512)
    assert out.dtype == np.float32 and out.shape == (6, 512)
    assert np.array_equal(out, ref)
    assert np.all(np.isfinite(out)) and 0.1 < np.std(out) < 10


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_every_kind_maps_to_its_ggml_type(kind: QuantKind) -> None:
    assert quant_kind(GGML_TYPES[kind]) == kind
    block_size, type_size = gguf.GGML_QUANT_SIZES[GGML_TYPES[kind]]
    assert (VALUES_PER_BLOCK[kind], BLOCK_BYTES[kind]) == (block_size, type_size)


def test_f32_is_not_a_kept_kind() -> None:
    assert quant_kind(gguf.GGMLQuantizationType.F32) is None


def test_mismatched_shape_is_rejected() -> None:
    blocks = np.zeros((4, 20), dtype=np.uint8)
    with pytest.raises(ValueError, match="do not encode"):
        QuantizedTensor(kind="q4_1", blocks=blocks, shape=(4, 64)).dequantize()


def test_partial_k_block_is_rejected() -> None:
    blocks = np.zeros((4, 72), dtype=np.uint8)
    with pytest.raises(ValueError, match="do not encode"):
        QuantizedTensor(kind="q4_k", blocks=blocks, shape=(4, 128)).dequantize()
