"""Weight matrices on the tinygrad device, kept in their GGML block quantization.

A GGML block covers 32 consecutive values of one row. Q4_1 decodes as
`w = d * q + m` (q a 4-bit code), Q4_0 as `w = d * (q - 8)` (so it is Q4_1 with
`m = -8 d`), Q8_0 as `w = d * q` (q an int8). The codes stay packed in memory
(4 or 8 bits per weight); the scales are widened once to float32 because this
CPU's half-precision arithmetic is scalar and slow.

`matmul` writes dequantization and product as one lazy tinygrad expression, so
the scheduler fuses the decoding into the matmul kernel instead of ever
materialising a float32 weight matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tinygrad import Tensor, dtypes

from exoquic.engines.tinygrad.device import DEVICE
from exoquic.models.quant import BLOCK_BYTES, BLOCK_VALUES
from exoquic.models.weights import QuantizedTensor, WeightArray


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
class Q8Matrix:
    """`(rows, cols)` weights as int8 codes: `w[r, 32b + j] = scale[r, b] * values[r, b, j]`."""

    values: Tensor  # int8 (rows, cols/32, 32)
    scale: Tensor  # float32 (rows, cols/32)

    @property
    def shape(self) -> tuple[int, int]:
        rows, blocks, _ = self.values.shape
        return int(rows), int(blocks) * BLOCK_VALUES


@dataclass(frozen=True)
class DenseMatrix:
    weight: Tensor  # float32 (rows, cols)

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.weight.shape
        return int(rows), int(cols)


Matrix = Q4Matrix | Q8Matrix | DenseMatrix


def split_blocks(t: QuantizedTensor) -> dict[str, np.ndarray]:
    """The fields of every GGML block of `t` as numpy arrays (scales widened to float32)."""
    rows, cols = t.shape
    blocks = t.blocks.reshape(rows, cols // BLOCK_VALUES, BLOCK_BYTES[t.kind])
    scale = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    if t.kind == "q8_0":
        return {"values": blocks[..., 2:].copy().view(np.int8), "scale": scale}
    if t.kind == "q4_1":
        offset = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
        return {"packed": blocks[..., 4:].copy(), "scale": scale, "offset": offset}
    return {"packed": blocks[..., 2:].copy(), "scale": scale, "offset": -8 * scale}


def to_matrix(w: WeightArray) -> Matrix:
    """Move one weight matrix to the device, quantized ones still quantized."""
    if not isinstance(w, QuantizedTensor):
        return DenseMatrix(_device(np.ascontiguousarray(w, dtype=np.float32)))
    fields = {name: _device(array) for name, array in split_blocks(w).items()}
    return Q8Matrix(**fields) if w.kind == "q8_0" else Q4Matrix(**fields)


def _device(a: np.ndarray) -> Tensor:
    return Tensor(np.ascontiguousarray(a), device=DEVICE).realize()


def dequantized(w: Matrix) -> Tensor:
    """The lazy float32 `(rows, cols)` weights of `w` (fused into whatever consumes them)."""
    rows, cols = w.shape
    if isinstance(w, DenseMatrix):
        return w.weight
    if isinstance(w, Q8Matrix):
        return (w.values.cast(dtypes.float32) * w.scale.unsqueeze(-1)).reshape(rows, cols)
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
    """The matrices stacked along their rows (one product instead of several), if compatible."""
    if all(isinstance(p, QuantizedTensor) for p in parts):
        quantized = [p for p in parts if isinstance(p, QuantizedTensor)]
        kind, cols = quantized[0].kind, quantized[0].shape[1]
        if any(q.kind != kind or q.shape[1] != cols for q in quantized):
            return None
        blocks = np.concatenate([q.blocks for q in quantized])
        return QuantizedTensor(kind, blocks, (sum(q.shape[0] for q in quantized), cols))
    if any(isinstance(p, QuantizedTensor) for p in parts):
        return None
    return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])
