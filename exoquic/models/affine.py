"""MLX affine quantization, as mlx-community checkpoints store it.

An mlx-community repository quantizes each linear layer (and usually the
embedding) in groups of `group_size` consecutive values of a row (64 by
default): `w = scale * q + bias`, with `q` a `bits`-bit code and one `scale`
and `bias` per group. The codes are packed little-endian into uint32 words:
value `j` of a row sits in word `j * bits // 32` at bit `(j * bits) % 32`.
The safetensors file holds three tensors per matrix: `X.weight` (the uint32
words), `X.scales` and `X.biases` (bfloat16 or float16), and `config.json`
says `"quantization": {"group_size": 64, "bits": 4}`, with per-module
overrides keyed by the module's path.

`AffineTensor` keeps such a matrix as it is. The MLX engine computes on it
natively; tinygrad converts it exactly (see `engines/tinygrad/matrices.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SUPPORTED_BITS = (4, 8)
SUPPORTED_GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class AffineTensor:
    """A `(rows, cols)` matrix in MLX affine quantization.

    weight: uint32 `(rows, cols * bits / 32)`, the packed codes;
    scales, biases: float32 `(rows, cols / group_size)` (widened exactly from
    the checkpoint's 16-bit floats).
    """

    bits: int
    group_size: int
    weight: np.ndarray
    scales: np.ndarray
    biases: np.ndarray

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"{self.bits}-bit affine quantization is not supported")
        if self.group_size not in SUPPORTED_GROUP_SIZES:
            raise ValueError(f"affine group size {self.group_size} is not supported")
        rows, cols = self.shape
        groups = (rows, cols // self.group_size)
        if self.weight.dtype != np.uint32 or cols % self.group_size:
            raise ValueError(f"packed weight {self.weight.dtype}{self.weight.shape} is not valid")
        if self.scales.shape != groups or self.biases.shape != groups:
            raise ValueError(
                f"scales {self.scales.shape} / biases {self.biases.shape} do not match "
                f"{groups[1]} groups of {self.group_size} per row"
            )

    @property
    def shape(self) -> tuple[int, int]:
        rows, words = self.weight.shape
        return int(rows), int(words) * 32 // self.bits

    def codes(self) -> np.ndarray:
        """The unpacked codes: uint8 `(rows, cols)`."""
        return unpack_codes(self.weight, self.bits)

    def dequantize(self) -> np.ndarray:
        """The float32 `(rows, cols)` weights."""
        rows, cols = self.shape
        grouped = self.codes().reshape(rows, -1, self.group_size).astype(np.float32)
        w = grouped * self.scales[..., None] + self.biases[..., None]
        return w.reshape(rows, cols)

    def take_rows(self, rows: np.ndarray) -> AffineTensor:
        """The matrix of the given rows only (an embedding lookup)."""
        return AffineTensor(
            self.bits, self.group_size, self.weight[rows], self.scales[rows], self.biases[rows]
        )


def unpack_codes(weight: np.ndarray, bits: int) -> np.ndarray:
    """uint32 words -> uint8 codes, `32 / bits` per word, lowest bits first."""
    per_word = 32 // bits
    shifts = np.arange(per_word, dtype=np.uint32) * bits
    codes = (weight[..., None] >> shifts) & np.uint32((1 << bits) - 1)
    return codes.reshape(*weight.shape[:-1], -1).astype(np.uint8)
