"""GGML block quantization formats kept in memory as `QuantizedTensor`.

Dequantization delegates to the `gguf` package so results are bit-exact with
the reference implementation that llama.cpp's tools use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as _gguf_dequantize

if TYPE_CHECKING:
    from exoquic.models.weights import QuantizedTensor, QuantKind

# Every block covers 32 consecutive values of one row.
BLOCK_VALUES = 32

GGML_TYPES: dict[QuantKind, GGMLQuantizationType] = {
    "q4_0": GGMLQuantizationType.Q4_0,
    "q4_1": GGMLQuantizationType.Q4_1,
    "q8_0": GGMLQuantizationType.Q8_0,
}

# Bytes per 32-value block: f16 scale (+ f16 min for q4_1) + packed values.
BLOCK_BYTES: dict[QuantKind, int] = {"q4_0": 18, "q4_1": 20, "q8_0": 34}


def quant_kind(ggml_type: GGMLQuantizationType) -> QuantKind | None:
    """The `QuantKind` kept for a GGML type, or None if it is loaded dense."""
    for kind, t in GGML_TYPES.items():
        if t == ggml_type:
            return kind
    return None


def dequantize(t: QuantizedTensor) -> np.ndarray:
    """The float32 `(rows, cols)` matrix a `QuantizedTensor` encodes."""
    rows, cols = t.shape
    expected = (rows, cols // BLOCK_VALUES * BLOCK_BYTES[t.kind])
    if cols % BLOCK_VALUES or t.blocks.shape != expected or t.blocks.dtype != np.uint8:
        raise ValueError(
            f"{t.kind} blocks {t.blocks.dtype}{t.blocks.shape} do not encode shape {t.shape}"
        )
    out = _gguf_dequantize(t.blocks, GGML_TYPES[t.kind])
    return np.asarray(out, dtype=np.float32).reshape(rows, cols)
