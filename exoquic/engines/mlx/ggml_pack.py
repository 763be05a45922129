"""Repack GGML block-quantized matrices into MLX affine quantization, exactly.

GGML's Q4_0, Q4_1 and Q8_0 blocks all hold 32 consecutive elements of a row
with one float16 scale (and, for Q4_1, one float16 minimum). Each is an affine
code `w = scale * q + bias` with a per-32 group scale and bias, which is what
MLX's `mx.quantized_matmul(..., group_size=32, mode="affine")` computes on:

    Q4_1: w = d*q + m       (q in 0..15)   -> bits=4, scale=d, bias=m
    Q4_0: w = d*(q - 8)     (q in 0..15)   -> bits=4, scale=d, bias=-8d
    Q8_0: w = d*q           (q in -128..127) -> bits=8, q+128, scale=d, bias=-128d

Scales and biases are kept in float32: `d` and `m` are float16 values, so
`d*q` is exact in float32 and `-8d`, `-128d` are exact power-of-two multiples;
the dequantized weights equal GGML's bit for bit.

Only the element order differs. A GGML 4-bit block stores elements 0..15 in
the low nibbles and 16..31 in the high nibbles of its 16 bytes; MLX packs
consecutive elements into a uint32 from the low bits up (so, read as
little-endian bytes, element 2i is the low nibble of byte i). This module is
pure numpy so it can be tested without MLX.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exoquic.models.quant import BLOCK_BYTES, BLOCK_VALUES
from exoquic.models.weights import QuantizedTensor

GROUP_SIZE = BLOCK_VALUES


@dataclass(frozen=True)
class AffineQuantized:
    """A matrix in MLX affine quantized form (what `mx.quantize` returns).

    `weight` is uint32 `(rows, cols * bits / 32)`; `scales` and `biases` are
    float32 `(rows, cols / 32)`.
    """

    weight: np.ndarray
    scales: np.ndarray
    biases: np.ndarray
    bits: int


# The kinds that are one affine code per 32 values; others are dequantized by the engine.
MAPPABLE_KINDS = frozenset({"q4_0", "q4_1", "q8_0"})


def is_mappable(t: QuantizedTensor) -> bool:
    """Whether `to_affine` can repack this tensor."""
    return t.kind in MAPPABLE_KINDS and t.shape[1] % GROUP_SIZE == 0


def to_affine(t: QuantizedTensor) -> AffineQuantized:
    """Repack a GGML Q4_0 / Q4_1 / Q8_0 matrix into MLX's affine layout."""
    if not is_mappable(t):
        raise ValueError(f"cannot map {t.kind} {t.shape} to MLX affine quantization")
    rows, cols = t.shape
    blocks = _blocks(t, rows, cols)
    d = _f16(blocks, 0)
    if t.kind == "q4_1":
        return _pack4(blocks[:, :, 4:], d, _f16(blocks, 2), rows)
    if t.kind == "q4_0":
        return _pack4(blocks[:, :, 2:], d, -8.0 * d, rows)
    # q8_0: flipping the sign bit of an int8 is adding 128 to it as a uint8.
    codes = (blocks[:, :, 2:] ^ np.uint8(0x80)).reshape(rows, -1)
    weight = np.ascontiguousarray(codes).view(np.uint32)
    return AffineQuantized(weight, d, -128.0 * d, bits=8)


def _blocks(t: QuantizedTensor, rows: int, cols: int) -> np.ndarray:
    """The raw bytes as `(rows, blocks_per_row, block_bytes)`."""
    size = BLOCK_BYTES[t.kind]
    raw = np.ascontiguousarray(t.blocks, dtype=np.uint8)
    if raw.shape != (rows, cols // GROUP_SIZE * size):
        raise ValueError(f"{t.kind} blocks of shape {raw.shape} do not fit {t.shape}")
    return raw.reshape(rows, cols // GROUP_SIZE, size)


def _f16(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The float16 field at byte `offset` of every block, as float32 `(rows, groups)`."""
    pair = np.ascontiguousarray(blocks[:, :, offset : offset + 2])
    return pair.view("<f2")[:, :, 0].astype(np.float32)


def _pack4(qs: np.ndarray, scales: np.ndarray, biases: np.ndarray, rows: int) -> AffineQuantized:
    """Reorder 16-byte GGML nibble blocks into MLX's consecutive 4-bit packing."""
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=2)  # (rows, groups, 32) in element order
    codes = codes.reshape(rows, -1)
    packed = codes[:, 0::2] | (codes[:, 1::2] << 4)
    weight = np.ascontiguousarray(packed).view(np.uint32)
    return AffineQuantized(weight, scales, biases, bits=4)
