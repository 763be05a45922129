"""GGML block quantization formats kept in memory as `QuantizedTensor`.

Each kind stores a row as consecutive GGML blocks, exactly as in a GGUF file:

    kind   values/block  bytes/block  decodes as
    q4_0       32           18        d * (q - 8), q 4-bit
    q4_1       32           20        d * q + m, q 4-bit
    q5_0       32           22        d * (q - 16), q 5-bit (high bits in a u32)
    q5_1       32           24        d * q + m, q 5-bit
    q8_0       32           34        d * q, q int8
    q4_k      256          144        8 sub-blocks of 32: d*sc * q - dmin*m, 6-bit sc, m
    q5_k      256          176        as q4_k with a 5th bit per value
    q6_k      256          210        16 sub-blocks of 16: d * sc * (q - 32), int8 sc
    iq4_nl     32           18        d * K[q], q 4-bit, K the int8 codebook `IQ4_VALUES`
    iq4_xs    256          136        8 sub-blocks of 32: d * (ls - 32) * K[q], 6-bit ls
    f16         1            2        IEEE half
    bf16        1            2        bfloat16

Dequantization delegates to the `gguf` package so results are bit-exact with
the reference implementation that llama.cpp's tools use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as _gguf_dequantize

if TYPE_CHECKING:
    from exoquic.models.weights import QuantizedTensor, QuantKind

# The legacy kinds (q4_0, q4_1, q5_0, q5_1, q8_0) cover 32 values per block; kept
# for callers that only handle those. Use `VALUES_PER_BLOCK` for any kind.
BLOCK_VALUES = 32

GGML_TYPES: dict[QuantKind, GGMLQuantizationType] = {
    "q4_0": GGMLQuantizationType.Q4_0,
    "q4_1": GGMLQuantizationType.Q4_1,
    "q5_0": GGMLQuantizationType.Q5_0,
    "q5_1": GGMLQuantizationType.Q5_1,
    "q8_0": GGMLQuantizationType.Q8_0,
    "q4_k": GGMLQuantizationType.Q4_K,
    "q5_k": GGMLQuantizationType.Q5_K,
    "q6_k": GGMLQuantizationType.Q6_K,
    "iq4_nl": GGMLQuantizationType.IQ4_NL,
    "iq4_xs": GGMLQuantizationType.IQ4_XS,
    "f16": GGMLQuantizationType.F16,
    "bf16": GGMLQuantizationType.BF16,
}

# The non-linear 4-bit codebook of IQ4_NL and IQ4_XS (llama.cpp's `kvalues_iq4nl`).
IQ4_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)

# Values per block and bytes per block of every kind (GGML's own table).
VALUES_PER_BLOCK: dict[QuantKind, int] = {k: GGML_QUANT_SIZES[t][0] for k, t in GGML_TYPES.items()}
BLOCK_BYTES: dict[QuantKind, int] = {k: GGML_QUANT_SIZES[t][1] for k, t in GGML_TYPES.items()}


def quant_kind(ggml_type: GGMLQuantizationType) -> QuantKind | None:
    """The `QuantKind` kept for a GGML type, or None if it is loaded as float32."""
    for kind, t in GGML_TYPES.items():
        if t == ggml_type:
            return kind
    return None


def row_bytes(kind: QuantKind, cols: int) -> int:
    """Bytes of one row of `cols` values; ValueError if `cols` is not whole blocks."""
    if cols % VALUES_PER_BLOCK[kind]:
        raise ValueError(
            f"{kind} rows hold whole blocks of {VALUES_PER_BLOCK[kind]} values, not {cols}"
        )
    return cols // VALUES_PER_BLOCK[kind] * BLOCK_BYTES[kind]


def check_blocks(t: QuantizedTensor) -> None:
    """ValueError unless `t.blocks` is uint8 `(rows, bytes_per_row)` for `t.shape`."""
    rows, cols = t.shape
    if (
        cols % VALUES_PER_BLOCK[t.kind]
        or t.blocks.dtype != np.uint8
        or t.blocks.shape != (rows, row_bytes(t.kind, cols))
    ):
        raise ValueError(
            f"{t.kind} blocks {t.blocks.dtype}{t.blocks.shape} do not encode shape {t.shape}"
        )


def dequantize(t: QuantizedTensor) -> np.ndarray:
    """The float32 `(rows, cols)` matrix a `QuantizedTensor` encodes."""
    check_blocks(t)
    out = _gguf_dequantize(np.ascontiguousarray(t.blocks), GGML_TYPES[t.kind])
    return np.asarray(out, dtype=np.float32).reshape(t.shape)
