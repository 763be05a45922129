"""A small, strict reader for `.safetensors` files that reads only named tensors.

Why not `safetensors.safe_open(framework="numpy")`: numpy has no bfloat16, so
it cannot return the bf16 tensors most Hugging Face checkpoints hold. The
format is simple enough to read directly: u64 little-endian header length, a
JSON header `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__":
{...}}`, then the data section. Every offset is checked against the file size.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from exoquic.models.errors import ModelLoadError

# A real header is a few hundred KiB at most; a larger length means corruption.
MAX_HEADER_BYTES = 100 * 1024 * 1024

_DTYPES: dict[str, np.dtype[Any]] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bits, widened to float32 by `_to_float32`
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "U32": np.dtype("<u4"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file; `offset` is absolute in the file."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass(frozen=True)
class SafetensorsFile:
    """The parsed header of a safetensors file; tensors are read on demand."""

    path: Path
    tensors: dict[str, TensorEntry]

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SafetensorsFile:
        """Parse the header; raises ModelLoadError if the file is missing or malformed."""
        p = Path(path)
        try:
            with p.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                header, header_length = _read_header(f, size, p)
        except FileNotFoundError as e:
            raise ModelLoadError(f"{p}: safetensors file not found") from e
        except OSError as e:
            raise ModelLoadError(f"{p}: cannot read safetensors file: {e}") from e
        data_start = 8 + header_length
        tensors = {
            name: _entry(p, name, spec, data_start, size)
            for name, spec in header.items()
            if name != "__metadata__"
        }
        return cls(p, tensors)

    def read_float32(self, name: str) -> np.ndarray:
        """The named tensor as a float32 array (bf16/f16/f64 are converted)."""
        entry = self.tensors[name]
        if entry.dtype not in FLOAT_DTYPES:
            raise ModelLoadError(f"{self.path}: tensor {name} has non-float dtype {entry.dtype}")
        return _to_float32(self.read_raw(name), entry.dtype)

    def read_raw(self, name: str) -> np.ndarray:
        """The named tensor as stored (bfloat16 as its raw uint16 bits)."""
        entry = self.tensors[name]
        buf = bytearray(entry.nbytes)
        try:
            with self.path.open("rb") as f:
                f.seek(entry.offset)
                got = f.readinto(buf)
        except OSError as e:
            raise ModelLoadError(f"{self.path}: cannot read tensor {name}: {e}") from e
        if got != entry.nbytes:
            raise ModelLoadError(f"{self.path}: truncated while reading tensor {name}")
        return np.frombuffer(buf, dtype=_DTYPES[entry.dtype]).reshape(entry.shape)


def _read_header(f: BinaryIO, size: int, path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header and its length in bytes."""
    prefix = f.read(8)
    if len(prefix) < 8:
        raise ModelLoadError(f"{path}: truncated safetensors file ({size} bytes, no header)")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_HEADER_BYTES or 8 + length > size:
        raise ModelLoadError(
            f"{path}: corrupt safetensors header length {length} (file is {size} bytes)"
        )
    try:
        header = json.loads(f.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: corrupt safetensors header: {e}") from e
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path}: corrupt safetensors header: not a JSON object")
    return header, length


def _entry(path: Path, name: str, spec: Any, data_start: int, size: int) -> TensorEntry:
    try:
        dtype = str(spec["dtype"])
        shape = tuple(int(d) for d in spec["shape"])
        begin, end = (int(x) for x in spec["data_offsets"])
    except (TypeError, KeyError, ValueError) as e:
        raise ModelLoadError(f"{path}: corrupt header entry for tensor {name}: {spec!r}") from e
    if dtype not in _DTYPES:
        raise ModelLoadError(f"{path}: tensor {name} has unsupported dtype {dtype}")
    nbytes = int(np.prod(shape, dtype=np.int64)) * _DTYPES[dtype].itemsize
    if begin < 0 or end - begin != nbytes or any(d < 0 for d in shape):
        raise ModelLoadError(
            f"{path}: tensor {name} offsets {begin}..{end} do not fit {dtype}{list(shape)}"
        )
    if data_start + end > size:
        raise ModelLoadError(
            f"{path}: truncated: tensor {name} ends at byte {data_start + end}, "
            f"file is {size} bytes"
        )
    return TensorEntry(name, dtype, shape, data_start + begin, nbytes)


def _to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32":
        return raw
    if dtype == "BF16":
        # bfloat16 is the top half of a float32: widen the bits, then reinterpret.
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return raw.astype(np.float32)
