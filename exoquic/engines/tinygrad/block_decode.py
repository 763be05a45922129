"""GGML block bytes decoded as lazy tinygrad expressions: the portable path.

These run as tinygrad-generated kernels on any device (no hand-written C), and
follow `gguf.quants`' numpy dequantizers operation for operation, so the float32
results are the same bit for bit. Scales are float16 fields decoded with
integer operations (no float16 arithmetic needed on the device).
"""

from __future__ import annotations

from collections.abc import Callable

from tinygrad import Tensor, dtypes

from exoquic.models.quant import BLOCK_BYTES, IQ4_VALUES, VALUES_PER_BLOCK
from exoquic.models.weights import QuantKind


def block_dequantized(blocks: Tensor, kind: QuantKind) -> Tensor:
    """The float32 `(rows, cols)` weights of uint8 GGML blocks `(rows, bytes_per_row)`."""
    rows, nbytes = (int(n) for n in blocks.shape)
    per_row = nbytes // BLOCK_BYTES[kind]
    blk = blocks.reshape(rows, per_row, BLOCK_BYTES[kind])
    return _DECODERS[kind](blk).reshape(rows, per_row * VALUES_PER_BLOCK[kind])


def _f16(pair: Tensor) -> Tensor:
    """float16 little-endian byte pairs `(..., 2)` -> float32 `(...)` (finite values)."""
    h = pair[..., 0].cast(dtypes.uint32) | (pair[..., 1].cast(dtypes.uint32) << 8)
    e, m = (h >> 10) & 31, h & 1023
    normal = (((e + 112) << 23) | (m << 13)).bitcast(dtypes.float32)
    magnitude = (e == 0).where(m.cast(dtypes.float32) * 2.0**-24, normal)
    return ((h & 0x8000) != 0).where(-magnitude, magnitude)


def _nibbles(qs: Tensor) -> Tensor:
    """Bytes `(..., 2k, n)` -> `(..., 2k, 2, n)`: low nibbles, then high nibbles."""
    return Tensor.stack(qs & 15, qs >> 4, dim=-2)


def _bits(qh: Tensor, count: int, width: int) -> Tensor:
    """`(..., n)` -> `(..., count, n)`: field t is bits `width*t .. width*t+width-1`."""
    mask = (1 << width) - 1
    return Tensor.stack(*[(qh >> (width * t)) & mask for t in range(count)], dim=-2)


def _k_scales(blk: Tensor) -> tuple[Tensor, Tensor]:
    """Q4_K/Q5_K: the 8 sub-block scales and minimums as float32 `(..., 8, 1)`, times d, dmin."""
    d, dmin = _f16(blk[..., 0:2]), _f16(blk[..., 2:4])
    a, m, md = blk[..., 4:8], blk[..., 8:12], blk[..., 12:16]
    sc = a.bitwise_and(63).cat((md & 15) | ((a >> 2) & 0x30), dim=-1).cast(dtypes.float32)
    mn = m.bitwise_and(63).cat((md >> 4) | ((m >> 2) & 0x30), dim=-1).cast(dtypes.float32)
    return (d.unsqueeze(-1) * sc).unsqueeze(-1), (dmin.unsqueeze(-1) * mn).unsqueeze(-1)


def _q4_k(blk: Tensor) -> Tensor:
    scale, low = _k_scales(blk)
    n = blk.shape[:-1]
    q = _nibbles(blk[..., 16:144].reshape(*n, 4, 32)).reshape(*n, 8, 32)
    return scale * q.cast(dtypes.float32) - low


def _q5_k(blk: Tensor) -> Tensor:
    scale, low = _k_scales(blk)
    n = blk.shape[:-1]
    ql = _nibbles(blk[..., 48:176].reshape(*n, 4, 32)).reshape(*n, 8, 32)
    qh = _bits(blk[..., 16:48], 8, 1)  # (..., 8, 32): bit j for sub-block j
    return scale * (ql | (qh << 4)).cast(dtypes.float32) - low


def _q6_k(blk: Tensor) -> Tensor:
    n = blk.shape[:-1]
    ql = _nibbles(blk[..., 0:128].reshape(*n, 2, 64)).reshape(*n, 8, 32)
    qh = _bits(blk[..., 128:192].reshape(*n, 2, 32), 4, 2).reshape(*n, 8, 32)
    q = (ql | (qh << 4)).cast(dtypes.float32) - 32
    scales = blk[..., 192:208].bitcast(dtypes.int8).cast(dtypes.float32)
    scale = (_f16(blk[..., 208:210]).unsqueeze(-1) * scales).unsqueeze(-1)  # (..., 16, 1)
    return scale * q.reshape(*n, 16, 16)


def _q5_codes(qh: Tensor, qs: Tensor) -> Tensor:
    """Q5_0/Q5_1: 5-bit codes `(..., 32)` from the u32 `qh` bytes and 16 nibble bytes."""
    n = qs.shape[:-1]
    high = _bits(qh, 8, 1).transpose(-1, -2).reshape(*n, 32)  # bit 8k + t of byte k
    low = _nibbles(qs).reshape(*n, 32)
    return (low | (high << 4)).cast(dtypes.float32)


def _q5_0(blk: Tensor) -> Tensor:
    q = _q5_codes(blk[..., 2:6], blk[..., 6:22]) - 16
    return _f16(blk[..., 0:2]).unsqueeze(-1) * q


def _q5_1(blk: Tensor) -> Tensor:
    q = _q5_codes(blk[..., 4:8], blk[..., 8:24])
    return _f16(blk[..., 0:2]).unsqueeze(-1) * q + _f16(blk[..., 2:4]).unsqueeze(-1)


def _q8_0(blk: Tensor) -> Tensor:
    q = blk[..., 2:34].bitcast(dtypes.int8).cast(dtypes.float32)
    return _f16(blk[..., 0:2]).unsqueeze(-1) * q


def _iq4(q: Tensor) -> Tensor:
    """4-bit indices -> their float32 codebook values (a chain of selects, no gather)."""
    values = Tensor.full(q.shape, float(IQ4_VALUES[0]), dtype=dtypes.float32, device=q.device)
    for i, v in enumerate(IQ4_VALUES[1:], start=1):
        values = (q == i).where(float(v), values)
    return values


def _iq4_nl(blk: Tensor) -> Tensor:
    n = blk.shape[:-1]
    q = _nibbles(blk[..., 2:18]).reshape(*n, 32)
    return _f16(blk[..., 0:2]).unsqueeze(-1) * _iq4(q)


def _iq4_xs(blk: Tensor) -> Tensor:
    n = blk.shape[:-1]
    sl = blk[..., 4:8]  # sub-block 2k's low scale bits in byte k's low nibble, 2k + 1's high
    low = Tensor.stack(sl & 15, sl >> 4, dim=-1).reshape(*n, 8).cast(dtypes.int32)
    sh = blk[..., 2:3].cast(dtypes.uint32) | (blk[..., 3:4].cast(dtypes.uint32) << 8)
    high = _bits(sh, 8, 2).reshape(*n, 8).cast(dtypes.int32)  # bits 2j of the u16 scales_h
    ls = (low | (high << 4)) - 32
    scale = (_f16(blk[..., 0:2]).unsqueeze(-1) * ls.cast(dtypes.float32)).unsqueeze(-1)
    q = _nibbles(blk[..., 8:136].reshape(*n, 8, 16)).reshape(*n, 8, 32)
    return scale * _iq4(q)


def _bf16(blk: Tensor) -> Tensor:
    """bfloat16 byte pairs `(..., 2)` (f16/bf16 "blocks" are single values) -> float32."""
    h = blk[..., 0].cast(dtypes.uint32) | (blk[..., 1].cast(dtypes.uint32) << 8)
    return (h << 16).bitcast(dtypes.float32)


_DECODERS: dict[QuantKind, Callable[[Tensor], Tensor]] = {
    "f16": _f16,
    "bf16": _bf16,
    "q5_0": _q5_0,
    "q5_1": _q5_1,
    "q8_0": _q8_0,
    "q4_k": _q4_k,
    "q5_k": _q5_k,
    "q6_k": _q6_k,
    "iq4_nl": _iq4_nl,
    "iq4_xs": _iq4_xs,
}
