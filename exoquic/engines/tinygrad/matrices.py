"""Weight matrices on the tinygrad device, kept in their GGML block quantization.

Most kinds (Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, F16, BF16) stay
exactly as in the GGUF file (`BlockMatrix`), used in place from the file's memory
map; `ggml_kernels` and `block_decode` read them. Q4_0 and Q4_1 (the bundled model's) are repacked
(`Q4Matrix`): a GGML block covers 32 consecutive values of one row, Q4_1 decodes
as `w = d * q + m` (q a 4-bit code), Q4_0 as `w = d * (q - 8)` (so it is Q4_1
with `m = -8 d`); the codes stay packed, the scales are widened once to float32,
which the hand-written kernels for it read a little faster than float16 fields.

`matmul` writes dequantization and product as one lazy tinygrad expression, so
the scheduler fuses the decoding into the matmul kernel instead of ever
materialising a float32 weight matrix.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import numpy as np
from tinygrad import Tensor, dtypes

from exoquic.engines.tinygrad.block_decode import block_dequantized
from exoquic.engines.tinygrad.device import DEVICE
from exoquic.models.affine import AffineTensor
from exoquic.models.gguf_file import release_pages
from exoquic.models.quant import BLOCK_BYTES, BLOCK_VALUES, VALUES_PER_BLOCK
from exoquic.models.weights import QuantizedTensor, QuantKind, WeightArray


@dataclass(frozen=True)
class Q4Matrix:
    """`(rows, cols)` weights as 4-bit codes: `w[r, 32b + j] = scale[r, b] * q + offset[r, b]`.

    packed: uint8 `(rows, cols/32, 16)`; byte j holds value j in its low nibble
    and value j + 16 in its high nibble (GGML's layout).
    """

    packed: Tensor
    scale: Tensor  # float32 (rows, cols/32)
    offset: Tensor  # float32 (rows, cols/32)

    @property
    def shape(self) -> tuple[int, int]:
        rows, blocks, _ = self.packed.shape
        return int(rows), int(blocks) * BLOCK_VALUES


@dataclass(frozen=True)
class BlockMatrix:
    """`(rows, cols)` weights in GGML blocks of `kind` (one of `BLOCK_KINDS`), the
    file's bytes unchanged: uint8 `(rows, bytes_per_row)`.

    The C kernels of `ggml_kernels` and `block_dequantized` read them as they are.
    """

    blocks: Tensor
    kind: QuantKind

    @property
    def shape(self) -> tuple[int, int]:
        rows, nbytes = self.blocks.shape
        blocks = int(nbytes) // BLOCK_BYTES[self.kind]
        return int(rows), blocks * VALUES_PER_BLOCK[self.kind]


@dataclass(frozen=True)
class DenseMatrix:
    weight: Tensor  # float32 (rows, cols)

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.weight.shape
        return int(rows), int(cols)


@dataclass(frozen=True)
class OffsetMatrix:
    """8-bit MLX affine weights `w = s * c + m` (code c in 0..255, one s and m per group).

    Exactly `s * (c - 128) + (m + 128 s)`: the first term is GGML Q8_0 blocks (codes
    `c - 128`, scale `s`), which the fast kernels multiply as they are; the second is
    one offset per group, multiplied by the activations' group sums.

    blocks: uint8 `(rows, cols / 32 * 34)`, Q8_0; offset: float32 `(rows, cols / group)`.
    """

    blocks: Tensor
    offset: Tensor

    @property
    def shape(self) -> tuple[int, int]:
        rows, nbytes = self.blocks.shape
        return int(rows), int(nbytes) // BLOCK_BYTES["q8_0"] * BLOCK_VALUES

    @property
    def group_size(self) -> int:
        return self.shape[1] // int(self.offset.shape[1])

    @property
    def codes(self) -> BlockMatrix:
        return BlockMatrix(self.blocks, "q8_0")


Matrix = Q4Matrix | BlockMatrix | DenseMatrix | OffsetMatrix

# Kinds computed on in their file layout (`BlockMatrix`, used from the file's map in
# place); Q4_0/Q4_1 are repacked (`Q4Matrix`: float32 scales, a little faster).
BLOCK_KINDS: frozenset[QuantKind] = frozenset(
    {"q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k", "iq4_nl", "iq4_xs", "f16", "bf16"}
)


def split_blocks(t: QuantizedTensor) -> dict[str, np.ndarray]:
    """The fields of every Q4_0 / Q4_1 block of `t` as numpy arrays (scales widened to
    float32)."""
    rows, cols = t.shape
    blocks = t.blocks.reshape(rows, cols // BLOCK_VALUES, BLOCK_BYTES[t.kind])
    scale = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if t.kind == "q4_1":
        offset = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        return {"packed": blocks[..., 4:].copy(), "scale": scale, "offset": offset}
    return {"packed": blocks[..., 2:].copy(), "scale": scale, "offset": -8 * scale}


class HostArrays:
    """Host memory that device tensors use in place (tinygrad's CPU device is the host).

    `tensor(a)` copies `a` once into 64-byte aligned memory kept here and wraps it
    without another copy, so weights are not held twice and need no upload kernels.
    `view(a)` wraps `a`'s own memory (a mapped file's pages, say) and keeps `a`
    alive. Keep this object alive as long as the tensors.
    """

    ALIGN = 64

    def __init__(self) -> None:
        self._arrays: list[np.ndarray] = []  # allocated here (counted in `nbytes`)
        self._views: list[np.ndarray] = []  # others' memory, kept alive

    def tensor(self, a: np.ndarray) -> Tensor:
        a = np.asarray(a)
        aligned = self._allocate(a.shape, a.dtype, np.empty)
        aligned[...] = a
        return self._wrap(aligned)

    def view(self, a: np.ndarray) -> Tensor:
        """`a` as a tensor without copying it (copied if it is not C-contiguous).

        The tensor may be read-only memory: weights are never written.
        """
        if not a.flags.c_contiguous:
            return self.tensor(a)
        self._views.append(a)
        return self._wrap(a)

    def zeros(self, shape: tuple[int, ...]) -> Tensor:
        """A float32 tensor of zeros; its pages only take memory once written (calloc)."""
        return self._wrap(self._allocate(shape, np.dtype(np.float32), np.zeros))

    def _allocate(
        self, shape: tuple[int, ...], dtype: np.dtype, make: Callable[..., np.ndarray]
    ) -> np.ndarray:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        raw = make(nbytes + self.ALIGN, np.uint8)
        self._arrays.append(raw)
        skip = -raw.ctypes.data % self.ALIGN
        return raw[skip : skip + nbytes].view(dtype).reshape(shape)

    def _wrap(self, aligned: np.ndarray) -> Tensor:
        dtype = _DTYPES[aligned.dtype.str]
        return Tensor.from_blob(aligned.ctypes.data, aligned.shape, dtype=dtype, device=DEVICE)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays)


_DTYPES = {"<f4": dtypes.float32, "|u1": dtypes.uint8}


def to_matrix(w: WeightArray, host: HostArrays) -> Matrix:
    """One weight matrix as device tensors, quantized ones still quantized."""
    if isinstance(w, AffineTensor):
        return _affine_matrix(w, host)
    if not isinstance(w, QuantizedTensor):
        return DenseMatrix(host.tensor(np.asarray(w, dtype=np.float32)))
    if w.shape[1] % BLOCK_VALUES:
        # Only f16/bf16 rows can be this short of whole blocks; activations are
        # quantized in blocks of 32, so these take the float path.
        m: Matrix = DenseMatrix(host.tensor(w.dequantize()))
    elif w.kind in BLOCK_KINDS:
        return BlockMatrix(host.view(w.blocks), w.kind)
    else:
        m = Q4Matrix(**{name: host.tensor(a) for name, a in split_blocks(w).items()})
    release_pages(w.blocks)  # copied: the file's pages are not needed any more
    return m


def _affine_matrix(w: AffineTensor, host: HostArrays) -> Matrix:
    """MLX affine weights, converted exactly to what the kernels compute on.

    4 bits: `Q4Matrix` (its float32 scale and offset per 32 values hold any 16-bit
    group's exactly). 8 bits: `OffsetMatrix`, whose Q8_0 scales are float16: a
    bfloat16 scale below float16's normal range (2**-14) loses bits there.
    """
    rows, cols = w.shape
    per_block = w.group_size // BLOCK_VALUES
    codes = w.codes().reshape(rows, cols // BLOCK_VALUES, BLOCK_VALUES)
    scale = np.repeat(w.scales, per_block, axis=1)
    if w.bits == 4:
        packed = codes[..., :16] | (codes[..., 16:] << 4)
        return Q4Matrix(
            host.tensor(packed), host.tensor(scale), host.tensor(np.repeat(w.biases, per_block, 1))
        )
    signed = (codes.astype(np.int16) - 128).astype(np.int8).view(np.uint8)
    d = scale.astype(np.float16).view(np.uint8).reshape(rows, -1, 2)
    blocks = np.concatenate([d, signed], axis=-1).reshape(rows, -1)
    offset = (w.biases + 128 * w.scales).astype(np.float32)
    return OffsetMatrix(host.tensor(blocks), host.tensor(offset))


def matrix_tensors(m: Matrix) -> list[Tensor]:
    """The tensors of a matrix, in field order."""
    return [getattr(m, f.name) for f in fields(m) if f.name != "kind"]


def with_tensors(m: Matrix, tensors: list[Tensor]) -> Matrix:
    """A matrix of the same kind made of other tensors (same order as `matrix_tensors`)."""
    if isinstance(m, BlockMatrix):
        return BlockMatrix(tensors[0], m.kind)
    return type(m)(*tensors)


def matrix_key(m: Matrix) -> str:
    """Equal for matrices one traced computation can serve (with equal tensor shapes)."""
    return f"{type(m).__name__}:{m.kind}" if isinstance(m, BlockMatrix) else type(m).__name__


def dequantized(w: Matrix) -> Tensor:
    """The lazy float32 `(rows, cols)` weights of `w` (fused into whatever consumes them)."""
    rows, cols = w.shape
    if isinstance(w, DenseMatrix):
        return w.weight
    if isinstance(w, BlockMatrix):
        return block_dequantized(w.blocks, w.kind)
    if isinstance(w, OffsetMatrix):
        groups = int(w.offset.shape[1])
        offsets = w.offset.unsqueeze(-1).expand(rows, groups, w.group_size).reshape(rows, cols)
        return block_dequantized(w.blocks, "q8_0") + offsets
    low, high = w.packed.bitwise_and(15), w.packed.rshift(4)
    codes = low.cat(high, dim=-1).cast(dtypes.float32)  # (rows, blocks, 32)
    return (codes * w.scale.unsqueeze(-1) + w.offset.unsqueeze(-1)).reshape(rows, cols)


def matmul(x: Tensor, w: Matrix, fast: bool) -> Tensor:
    """`x @ w.T` for x `(R, cols)`: `(R, rows)`.

    fast: use the C kernels of `custom` for quantized weights, which quantize
    the activations to int8 blocks first (llama.cpp's CPU scheme; results
    differ from float32 activations by ~1e-2 relative). Otherwise one fused
    tinygrad expression with float32 activations.
    """
    if fast and not isinstance(w, DenseMatrix):
        from exoquic.engines.tinygrad.custom import quantize_rows, quantized_matmul

        return quantized_matmul(*quantize_rows(x), w)
    return x @ dequantized(w).T


def fuse_rows(parts: list[WeightArray]) -> WeightArray | None:
    """The matrices stacked along their rows (one product instead of several), if compatible.

    Kinds used in their file layout that already lie one after another in memory
    (gate and up in a GGUF's map, say) become one view; others are copied once
    (their file pages then dropped), so memory stays one copy either way.
    """
    if any(isinstance(p, AffineTensor) for p in parts):
        return _fuse_affine(parts)
    if all(isinstance(p, QuantizedTensor) for p in parts):
        quantized = [p for p in parts if isinstance(p, QuantizedTensor)]
        kind, cols = quantized[0].kind, quantized[0].shape[1]
        if any(q.kind != kind or q.shape[1] != cols for q in quantized):
            return None
        rows = sum(q.shape[0] for q in quantized)
        blocks = _adjacent(quantized) if kind in BLOCK_KINDS else None
        if blocks is None:
            blocks = np.concatenate([q.blocks for q in quantized])
            for q in quantized:
                release_pages(q.blocks)  # copied: the file's pages are not needed any more
        return QuantizedTensor(kind, blocks, (rows, cols))
    if any(isinstance(p, QuantizedTensor) for p in parts):
        return None
    return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])


def _fuse_affine(parts: list[WeightArray]) -> AffineTensor | None:
    """MLX affine matrices of one format stacked along their rows (copied once)."""
    affine = [p for p in parts if isinstance(p, AffineTensor)]
    first = affine[0]
    if len(affine) < len(parts) or any(
        (a.bits, a.group_size, a.shape[1]) != (first.bits, first.group_size, first.shape[1])
        for a in affine
    ):
        return None
    return AffineTensor(
        first.bits,
        first.group_size,
        np.concatenate([a.weight for a in affine]),
        np.concatenate([a.scales for a in affine]),
        np.concatenate([a.biases for a in affine]),
    )


def _adjacent(parts: list[QuantizedTensor]) -> np.ndarray | None:
    """One view of the parts' blocks if each starts where the previous ends in one buffer."""
    arrays = [p.blocks for p in parts]
    root = _owner(arrays[0])
    start = arrays[0].ctypes.data
    end = start
    for a in arrays:
        if not a.flags.c_contiguous or _owner(a) is not root or a.ctypes.data != end:
            return None
        end += a.nbytes
    offset = start - root.ctypes.data
    rows = sum(a.shape[0] for a in arrays)
    return np.ndarray((rows, arrays[0].shape[1]), np.uint8, buffer=root, offset=offset)


def _owner(a: np.ndarray) -> np.ndarray:
    """The array at the root of `a`'s chain of views."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a
