"""GGML blocks read as affine groups: integer codes, one scale and one bias per group.

Every GGML type exoquic keeps decodes as `w = scale * code + bias` over groups
of consecutive values of a row, with a non-negative integer code:

    kind   group  bits  scale     bias       (d, dmin, m, sc: the block's fields)
    q4_0    32     4    d         -8 d
    q4_1    32     4    d         m
    q5_0    32     5    d         -16 d
    q5_1    32     5    d         m
    q8_0    32     8    d         -128 d      (code = int8 value + 128)
    q4_k    32     4    d * sc    -dmin * m   (sc, m: 6-bit, per 32-value sub-block)
    q5_k    32     5    d * sc    -dmin * m
    q6_k    16     6    d * sc    -32 d * sc  (sc: int8, per 16-value sub-block)
    iq4_nl  32     8    d         -128 d      (code = codebook value K[q] + 128)
    iq4_xs  32     8    d * (ls - 32)  -128 d * (ls - 32)  (ls: 6-bit, per sub-block)

The IQ4 kinds are not affine in their 4-bit index q, but their codebook values
are integers in -127..113, so as 8-bit codes they are.

Scales and biases are computed in float32 exactly as GGML's dequantization
computes them (a float16 times a small integer is exact in float32), so
`scale * code + bias` reproduces `gguf.quants.dequantize` bit for bit (for the
IQ4 kinds too: d has 11 significant bits and ls - 32 at most 5, so scale * code
needs at most 24 and is exact, and so is adding the bias).
Pure numpy, so it is tested without MLX; `ggml_pack` turns these groups into
MLX's packed layout. Layouts follow ggml-quants.c (`dequantize_row_*`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from exoquic.models.quant import BLOCK_BYTES, IQ4_VALUES, VALUES_PER_BLOCK, check_blocks
from exoquic.models.weights import QuantizedTensor, QuantKind


@dataclass(frozen=True)
class AffineGroups:
    """`w[r, g*group + i] = scales[r, g] * codes[r, g*group + i] + biases[r, g]`."""

    codes: np.ndarray  # uint8 (rows, cols), in element order
    scales: np.ndarray  # float32 (rows, cols / group)
    biases: np.ndarray  # float32 (rows, cols / group)
    group: int
    bits: int

    def dequantize(self) -> np.ndarray:
        rows, cols = self.codes.shape
        codes = self.codes.reshape(rows, -1, self.group).astype(np.float32)
        w = self.scales[:, :, None] * codes + self.biases[:, :, None]
        return w.reshape(rows, cols)


def affine_groups(t: QuantizedTensor) -> AffineGroups:
    """The affine groups a block-quantized matrix encodes (ValueError for f16/bf16)."""
    if t.kind not in _DECODERS:
        raise ValueError(f"{t.kind} is not a block-quantized kind")
    check_blocks(t)
    rows, cols = t.shape
    blocks = np.ascontiguousarray(t.blocks).reshape(
        rows, cols // VALUES_PER_BLOCK[t.kind], BLOCK_BYTES[t.kind]
    )
    codes, scales, biases, group, bits = _DECODERS[t.kind](blocks)
    return AffineGroups(
        codes.reshape(rows, cols).astype(np.uint8),
        scales.reshape(rows, -1).astype(np.float32),
        biases.reshape(rows, -1).astype(np.float32),
        group,
        bits,
    )


_Decoded = tuple[np.ndarray, np.ndarray, np.ndarray, int, int]


def _f16(blocks: np.ndarray, offset: int) -> np.ndarray:
    """The float16 field at byte `offset` of every block, as float32 `(rows, blocks)`."""
    return (
        np.ascontiguousarray(blocks[..., offset : offset + 2])
        .view("<f2")[..., 0]
        .astype(np.float32)
    )


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """Bytes `(..., n)` -> `(..., 2n)`: the n low nibbles, then the n high nibbles."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _q4_0(b: np.ndarray) -> _Decoded:
    d = _f16(b, 0)
    return _nibbles(b[..., 2:]), d, -8.0 * d, 32, 4


def _q4_1(b: np.ndarray) -> _Decoded:
    return _nibbles(b[..., 4:]), _f16(b, 0), _f16(b, 2), 32, 4


def _fifth_bits(qh: np.ndarray) -> np.ndarray:
    """The 32 high bits of a Q5_0/Q5_1 block (a little-endian u32), as 0/16 per value."""
    bits = np.unpackbits(np.ascontiguousarray(qh), axis=-1, bitorder="little")
    return bits << 4


def _q5_0(b: np.ndarray) -> _Decoded:
    d = _f16(b, 0)
    return _nibbles(b[..., 6:]) | _fifth_bits(b[..., 2:6]), d, -16.0 * d, 32, 5


def _q5_1(b: np.ndarray) -> _Decoded:
    return _nibbles(b[..., 8:]) | _fifth_bits(b[..., 4:8]), _f16(b, 0), _f16(b, 2), 32, 5


def _k_scales(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K's 12 packed bytes -> the 8 six-bit scales and 8 six-bit mins (get_scale_min_k4)."""
    low = s[..., 0:4] & 63, s[..., 4:8] & 63
    high_sc = (s[..., 8:12] & 0x0F) | ((s[..., 0:4] >> 6) << 4)
    high_m = (s[..., 8:12] >> 4) | ((s[..., 4:8] >> 6) << 4)
    return (
        np.concatenate([low[0], high_sc], axis=-1).astype(np.float32),
        np.concatenate([low[1], high_m], axis=-1).astype(np.float32),
    )


def _k_affine(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per 32-value sub-block scale `d * sc` and bias `-dmin * m` of Q4_K/Q5_K blocks."""
    sc, m = _k_scales(b[..., 4:16])
    return _f16(b, 0)[..., None] * sc, -(_f16(b, 2)[..., None] * m)


def _q4_k(b: np.ndarray) -> _Decoded:
    # Four chunks of 32 bytes; each gives a sub-block of low nibbles, then one of high.
    qs = b[..., 16:144].reshape(*b.shape[:-1], 4, 32)
    codes = _nibbles(qs).reshape(*b.shape[:-1], 256)
    scales, biases = _k_affine(b)
    return codes, scales, biases, 32, 4


def _q5_k(b: np.ndarray) -> _Decoded:
    qh = b[..., 16:48]  # bit 2c of byte l: 5th bit of value l of sub-block 2c
    qs = b[..., 48:176].reshape(*b.shape[:-1], 4, 32)
    low = _nibbles(qs)  # (..., 4, 64)
    shifts = np.arange(8, dtype=np.uint8).reshape(4, 2, 1)  # chunk c: bits 2c and 2c+1
    high = ((qh[..., None, None, :] >> shifts) & 1).reshape(*b.shape[:-1], 4, 64) << 4
    codes = (low | high).reshape(*b.shape[:-1], 256)
    scales, biases = _k_affine(b)
    return codes, scales, biases, 32, 5


def _q6_k(b: np.ndarray) -> _Decoded:
    lead = b.shape[:-1]
    ql = b[..., 0:128].reshape(*lead, 2, 64)  # per 128-value half: 64 bytes of low nibbles
    qh = b[..., 128:192].reshape(*lead, 2, 1, 32)  # per half: 32 bytes of 4 x 2 high bits
    low = np.concatenate([ql[..., :32] & 0x0F, ql[..., 32:] & 0x0F, ql[..., :32] >> 4,
                          ql[..., 32:] >> 4], axis=-1)  # fmt: skip
    shifts = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(4, 1)
    high = ((qh >> shifts) & 3).reshape(*lead, 2, 128)
    codes = (low | (high << 4)).reshape(*lead, 256)
    sc = b[..., 192:208].view(np.int8).astype(np.float32)
    scales = _f16(b, 208)[..., None] * sc
    return codes, scales, -32.0 * scales, 16, 6


def _q8_0(b: np.ndarray) -> _Decoded:
    d = _f16(b, 0)
    # Flipping the sign bit of an int8 is adding 128 to it as a uint8.
    return b[..., 2:] ^ np.uint8(0x80), d, -128.0 * d, 32, 8


# IQ4 codebook values as 8-bit codes: value + 128.
_IQ4_CODES = (np.array(IQ4_VALUES, dtype=np.int16) + 128).astype(np.uint8)


def _iq4_nl(b: np.ndarray) -> _Decoded:
    d = _f16(b, 0)
    return _IQ4_CODES[_nibbles(b[..., 2:])], d, -128.0 * d, 32, 8


def _iq4_xs(b: np.ndarray) -> _Decoded:
    lead = b.shape[:-1]
    sl = b[..., 4:8]  # sub-block 2k's low scale bits: byte k's low nibble; 2k + 1: its high
    low = np.stack([sl & 0x0F, sl >> 4], axis=-1).reshape(*lead, 8).astype(np.int32)
    sh = np.ascontiguousarray(b[..., 2:4]).view("<u2").astype(np.int32)  # (..., 1)
    high = (sh >> (2 * np.arange(8))) & 3
    scales = _f16(b, 0)[..., None] * ((low | (high << 4)) - 32).astype(np.float32)
    qs = b[..., 8:136].reshape(*lead, 8, 16)
    codes = _IQ4_CODES[_nibbles(qs)].reshape(*lead, 256)
    return codes, scales, -128.0 * scales, 32, 8


_DECODERS: dict[QuantKind, Callable[[np.ndarray], _Decoded]] = {
    "q4_0": _q4_0,
    "q4_1": _q4_1,
    "q5_0": _q5_0,
    "q5_1": _q5_1,
    "q8_0": _q8_0,
    "q4_k": _q4_k,
    "q5_k": _q5_k,
    "q6_k": _q6_k,
    "iq4_nl": _iq4_nl,
    "iq4_xs": _iq4_xs,
}
