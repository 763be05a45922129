"""Dequantization is bit-exact with the `gguf` package for every kept format."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from exoquic.models.quant import BLOCK_BYTES, GGML_TYPES
from exoquic.models.weights import QuantizedTensor, QuantKind


@pytest.mark.parametrize("kind", ["q4_0", "q4_1", "q8_0"])
def test_dequantize_matches_gguf(kind: QuantKind) -> None:
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((48, 128)).astype(np.float32)
    blocks = gguf.quants.quantize(dense, GGML_TYPES[kind])
    assert blocks.shape == (48, 128 // 32 * BLOCK_BYTES[kind])
    t = QuantizedTensor(kind=kind, blocks=blocks, shape=(48, 128))
    out = t.dequantize()
    ref = gguf.quants.dequantize(blocks, GGML_TYPES[kind])
    assert out.dtype == np.float32 and out.shape == (48, 128)
    assert np.array_equal(out, ref)
    # Quantization is lossy but close: catches a wrong block layout.
    assert np.max(np.abs(out - dense)) < 0.5


def test_mismatched_shape_is_rejected() -> None:
    blocks = np.zeros((4, 20), dtype=np.uint8)
    with pytest.raises(ValueError, match="do not encode"):
        QuantizedTensor(kind="q4_1", blocks=blocks, shape=(4, 64)).dequantize()
