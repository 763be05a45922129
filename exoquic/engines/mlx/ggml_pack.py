"""Repack GGML block-quantized matrices into MLX affine quantization.

MLX's `mx.quantized_matmul(..., mode="affine")` computes on groups of 32, 64
or 128 consecutive values of a row with one scale and one bias per group,
`w = scale * q + bias`, for 2, 3, 4, 5, 6 or 8-bit codes `q`. Every GGML kind
`ggml_codes` reads is such a code (see the table there); this module chooses
the MLX form and packs the codes:

- Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (32-value blocks) and Q4_K, Q5_K (256-value
  super-blocks of eight 32-value sub-blocks, each with its own 6-bit scale and
  minimum) map exactly: group size 32, 4, 5 or 8 bits, the scale and bias of
  each (sub-)block. The dequantized weights equal GGML's bit for bit.
- IQ4_NL and IQ4_XS (4-bit indices into a fixed codebook of 16 integers in
  -127..113, times a scale per 32 values) map exactly to 8-bit groups of 32:
  code = codebook value + 128, bias = -128 * scale. MLX's affine form cannot
  hold a non-linear 4-bit code, so this costs what Q8_0 costs here (8-bit
  codes, a float32 scale and bias per 32: 10 bits a value) instead of the
  file's 4.5 (IQ4_NL) or 4.25 (IQ4_XS): exactness over memory. 4 bits would
  need a lookup-table matmul kernel, which MLX does not have.
- Q6_K has a scale per 16 values, and MLX has no group of 16. Each pair of
  16-value sub-blocks becomes one 8-bit group of 32 whose step is a quarter
  of the larger sub-block's step: the sub-block with the larger scale stays
  exact (its 6-bit codes times 4 fit in 8 bits), the other is rounded to the
  nearest multiple of that step (error at most an eighth of the larger
  step). It costs 8 bits a value instead of 6.56. Kept exact instead, the
  pair would need two 6-bit matrices (twice the memory and the work) or
  float32.

Scales and biases are float32: GGML's are float16 products with small
integers, exact in float32. MLX packs consecutive codes from the low bits of
each byte up, little-endian, as one bit stream (for 4 bits: element 2i is the
low nibble of byte i). Pure numpy, so it is tested without MLX.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exoquic.engines.mlx.ggml_codes import AffineGroups, affine_groups
from exoquic.models.weights import QuantizedTensor

GROUP_SIZE = 32

# Kinds that become MLX affine quantization; f16/bf16 are float matrices.
MAPPABLE_KINDS = frozenset(
    {"q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k", "iq4_nl", "iq4_xs"}
)
# Kinds whose MLX form dequantizes to exactly GGML's weights.
EXACT_KINDS = MAPPABLE_KINDS - {"q6_k"}


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


def is_mappable(t: QuantizedTensor) -> bool:
    """Whether `to_affine` can repack this tensor."""
    return t.kind in MAPPABLE_KINDS and t.shape[1] % GROUP_SIZE == 0


def to_affine(t: QuantizedTensor) -> AffineQuantized:
    """Repack a GGML block-quantized matrix into MLX's affine layout (see the module doc)."""
    if not is_mappable(t):
        raise ValueError(f"cannot map {t.kind} {t.shape} to MLX affine quantization")
    groups = affine_groups(t)
    if groups.group == 16:
        groups = merge_sixteens(groups)
    return AffineQuantized(
        pack_codes(groups.codes, groups.bits), groups.scales, groups.biases, groups.bits
    )


def merge_sixteens(g: AffineGroups) -> AffineGroups:
    """6-bit groups of 16 symmetric around code 32 (Q6_K) -> 8-bit groups of 32.

    The new step is a quarter of the pair's larger scale, with its sign, so
    the larger sub-block's codes become `4 (q - 32) + 128` exactly and the
    other's values are rounded; the bias keeps code 128 at zero. Only a value
    of exactly 128 steps (equal scales of opposite sign, q = 0) is clipped to
    127, one step off.
    """
    rows, cols = g.codes.shape
    values = (g.codes.astype(np.float32) - 32.0).reshape(rows, -1, 16) * g.scales[:, :, None]
    pairs = g.scales.reshape(rows, -1, 2)
    larger = np.take_along_axis(pairs, np.abs(pairs).argmax(axis=2)[:, :, None], axis=2)
    step = larger[:, :, 0] / 4  # (rows, cols / 32), exact: a power-of-two division
    safe = np.where(step == 0, 1.0, step)[:, :, None]
    q = np.rint(values.reshape(rows, -1, 32) / safe)
    codes = (np.clip(q, -128, 127) + 128).astype(np.uint8).reshape(rows, cols)
    return AffineGroups(codes, step.astype(np.float32), -128.0 * step, 32, 8)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """uint8 codes `(rows, cols)` -> MLX's uint32 `(rows, cols * bits / 32)` bit stream.

    `per` consecutive codes fill a whole number of bytes (2 x 4 bits, 8 x 5,
    4 x 6, 1 x 8 ...); each such run is assembled in a uint64 and its low
    bytes are kept.
    """
    rows, cols = codes.shape
    per = 8 // np.gcd(8, bits)
    nbytes = per * bits // 8
    runs = codes.reshape(rows, cols // per, per).astype(np.uint64)
    shifts = (np.arange(per, dtype=np.uint64) * np.uint64(bits))[None, None, :]
    words = np.bitwise_or.reduce(runs << shifts, axis=2)  # (rows, runs)
    stream = words.astype("<u8").view(np.uint8).reshape(rows, -1, 8)[:, :, :nbytes]
    return np.ascontiguousarray(stream).reshape(rows, -1).view(np.uint32)
