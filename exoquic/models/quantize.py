"""Quantize float matrices into GGML blocks on load (for Hugging Face safetensors).

Q8_0 (and Q4_0 / Q4_1) come from `gguf.quants`, whose rounding matches
llama.cpp's reference quantizer. `gguf.quants` cannot make K-quants, so Q4_K
is written here with the plain min/max rule: per 32-value sub-block, the
scale spans its range and the minimum is its lowest value (at most 0); the
eight scales and minimums are then themselves quantized to 6 bits against
the super-block's float16 `d` and `dmin`. llama.cpp's quantizer searches a
little harder for scales (`make_qkx2_quants`), so its Q4_K files are
slightly more accurate than these.
"""

from __future__ import annotations

import numpy as np
from gguf.quants import quantize as _gguf_quantize

from exoquic.models.quant import GGML_TYPES, VALUES_PER_BLOCK, row_bytes
from exoquic.models.weights import QuantizedTensor, QuantKind

ENCODABLE: frozenset[QuantKind] = frozenset({"q4_0", "q4_1", "q8_0", "q4_k"})


def quantize(matrix: np.ndarray, kind: QuantKind) -> QuantizedTensor:
    """`matrix` (rows, cols) float32 as GGML blocks of `kind`; cols must be whole blocks."""
    if kind not in ENCODABLE:
        raise ValueError(f"cannot quantize to {kind} (only {', '.join(sorted(ENCODABLE))})")
    x = np.ascontiguousarray(matrix, dtype=np.float32)
    rows, cols = x.shape
    row_bytes(kind, cols)  # ValueError unless cols is whole blocks
    if kind == "q4_k":
        blocks = _q4_k(x.reshape(-1, VALUES_PER_BLOCK[kind]))
    else:
        blocks = _gguf_quantize(x, GGML_TYPES[kind])
    return QuantizedTensor(kind, blocks.reshape(rows, -1), (rows, cols))


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def _six_bits(values: np.ndarray, unit: np.ndarray) -> np.ndarray:
    """`values / unit` rounded into 0..63 (0 where the unit is 0)."""
    safe = np.where(unit == 0, 1, unit)
    return np.clip(np.rint(values / safe), 0, 63).astype(np.uint8)


def _q4_k(x: np.ndarray) -> np.ndarray:
    """Super-blocks `(n, 256)` -> Q4_K blocks `(n, 144)` (layout of ggml's block_q4_K)."""
    n = x.shape[0]
    sub = x.reshape(n, 8, 32)
    low = np.minimum(sub.min(axis=2), 0)  # (n, 8)
    scale, minimum = (sub.max(axis=2) - low) / 15, -low
    d, dmin = _f16(scale.max(axis=1) / 63), _f16(minimum.max(axis=1) / 63)
    sc = _six_bits(scale, d.astype(np.float32)[:, None])
    m = _six_bits(minimum, dmin.astype(np.float32)[:, None])
    # Codes against the scales as they will be decoded (float16 d times the 6-bit value).
    step = d.astype(np.float32)[:, None] * sc
    offset = dmin.astype(np.float32)[:, None] * m
    safe = np.where(step == 0, 1, step)[:, :, None]
    q = np.clip(np.rint((sub + offset[:, :, None]) / safe), 0, 15).astype(np.uint8)
    q = np.where(step[:, :, None] == 0, 0, q).astype(np.uint8)
    out = np.zeros((n, 144), np.uint8)
    out[:, 0:2] = d.reshape(n, 1).view(np.uint8)
    out[:, 2:4] = dmin.reshape(n, 1).view(np.uint8)
    out[:, 4:16] = _pack_scales(sc, m)
    pairs = q.reshape(n, 4, 2, 32)  # chunk c: sub-block 2c in low nibbles, 2c+1 in high
    out[:, 16:] = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(n, 128)
    return out


def _pack_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and minimums -> 12 bytes (the inverse of get_scale_min_k4)."""
    s = np.zeros((sc.shape[0], 12), np.uint8)
    s[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    s[:, 4:8] = (m[:, :4] & 63) | ((m[:, 4:] >> 4) << 6)
    s[:, 8:12] = (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)
    return s
