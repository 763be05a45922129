"""A small, strict reader for GGUF files: metadata, tensor index, tensor bytes.

Why not `gguf.GGUFReader`: it builds a numpy view per metadata string, which
takes 6-13 s for the default model's 98k tokenizer strings on a small CPU. This
reader parses the header with `struct` in well under a second, checks every
length against the file size before reading (a corrupt length cannot make it
allocate gigabytes), and reads only the tensors asked for: small ones as copies
(`read_tensor`), weights as read-only views of one memory map of the file
(`view_tensor`), so a node's weights are the file's pages, held once and only
where its shard touches them. A mapped file must not be truncated or rewritten
in place while views of it are alive (the kernel would fault the process); the
downloader writes new files under a temporary name and renames them.

Format (GGUF v2/v3, little endian): magic `GGUF`, u32 version, u64 tensor
count, u64 metadata count, the metadata key/values, the tensor infos (name,
dims innermost first, GGML type, offset from the data section), then the data
section aligned to `general.alignment` (default 32).
"""

from __future__ import annotations

import io
import mmap
import os
import struct
from dataclasses import dataclass, replace
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from exoquic.models.errors import ModelLoadError


class GGUFHeaderIncomplete(ModelLoadError):
    """The bytes given to `parse_gguf_header` end before the header does."""

    def __init__(self, name: str, needed: int) -> None:
        self.needed = needed  # the header is at least this many bytes long
        super().__init__(f"{name}: the GGUF header needs more than the first {needed - 1} bytes")


_MAGIC = b"GGUF"
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4

# GGUF metadata value types -> struct format of a scalar (8 = string, 9 = array).
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_FLOAT32, _STRING, _ARRAY = 6, 8, 9
# numpy dtype per scalar type, for reading arrays in one go.
_NP_DTYPES: dict[int, str] = {
    0: "<u1",
    1: "<i1",
    2: "<u2",
    3: "<i2",
    4: "<u4",
    5: "<i4",
    6: "<f4",
    7: "?",
    10: "<u8",
    11: "<i8",
    12: "<f8",
}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the file.

    `shape` is in numpy order (outermost first), the reverse of GGUF's dims.
    `offset` is absolute in the file.
    """

    name: str
    ggml_type: GGMLQuantizationType
    shape: tuple[int, ...]
    offset: int
    nbytes: int


_U64 = struct.Struct("<Q")


class _Cursor:
    """Sequential reads from a file that never run past its end."""

    def __init__(self, f: BinaryIO, size: int, path: Path) -> None:
        self._f = f
        self._size = size
        self._path = path
        self.pos = 0

    def read(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self._size:
            raise ModelLoadError(
                f"{self._path}: truncated or corrupt GGUF header: {what} needs {n} bytes "
                f"at offset {self.pos}, file is {self._size} bytes"
            )
        data = self._f.read(n)
        if len(data) < n:  # a prefix of the file (parse_gguf_header) ran out
            raise GGUFHeaderIncomplete(str(self._path), self.pos + n)
        self.pos += n
        return data

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("<Q", what)
        try:
            return self.read(length, what).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelLoadError(f"{self._path}: {what} is not valid UTF-8") from e

    def value(self, vtype: int, what: str) -> Any:
        if vtype == _FLOAT32:
            # The shortest decimal that round-trips the float32 (1e-05, not 9.99999974e-06),
            # so values match the ones a Hugging Face config.json holds.
            return float(str(np.float32(self.unpack("<f", what))))
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            return self.array(what)
        raise ModelLoadError(f"{self._path}: {what} has unknown GGUF value type {vtype}")

    def array(self, what: str) -> list[Any]:
        etype = self.unpack("<I", what)
        count = self.unpack("<Q", what)
        # Every element takes at least this many bytes (a string its u64 length), so a
        # corrupt count is caught here instead of after millions of reads.
        min_size = np.dtype(_NP_DTYPES[etype]).itemsize if etype in _NP_DTYPES else 8
        if count * min_size > self._size - self.pos:
            raise ModelLoadError(
                f"{self._path}: truncated or corrupt GGUF header: {what} claims {count} "
                f"elements, more than the {self._size - self.pos} bytes left"
            )
        if etype in _NP_DTYPES:
            dtype = np.dtype(_NP_DTYPES[etype])
            raw = self.read(count * dtype.itemsize, what)
            return np.frombuffer(raw, dtype=dtype).tolist()
        if etype == _STRING:
            return self.strings(count, what)
        return [self.value(etype, what) for _ in range(count)]

    def strings(self, count: int, what: str) -> list[str]:
        """`count` strings in a row: a vocabulary and its merges are ~10^5 each, read
        on every start, so this is one tight loop (half the time of `string` each)."""
        read, length = self.read, _U64.unpack
        raw = []
        for _ in range(count):
            raw.append(read(length(read(8, what))[0], what))
        try:
            return [b.decode("utf-8") for b in raw]
        except UnicodeDecodeError as e:
            raise ModelLoadError(f"{self._path}: {what} is not valid UTF-8") from e


@dataclass(frozen=True)
class GGUFFile:
    """The parsed header of a GGUF file; tensors are read on demand."""

    path: Path
    size: int
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, TensorInfo]
    metadata_end: int = 0  # offset where the tensor infos start (the metadata is 24..here)
    data_start: int = 0  # offset of the aligned data section

    @property
    def alignment(self) -> int:
        return int(self.metadata.get("general.alignment", _DEFAULT_ALIGNMENT))

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> GGUFFile:
        """Parse the header of `path`; raises ModelLoadError if it is not a valid GGUF."""
        p = Path(path)
        try:
            with p.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                return _parse(_Cursor(f, size, p), p, size)
        except FileNotFoundError as e:
            raise ModelLoadError(f"{p}: model file not found") from e
        except IsADirectoryError as e:
            raise ModelLoadError(f"{p}: is a directory, expected a .gguf file") from e
        except OSError as e:
            raise ModelLoadError(f"{p}: cannot read model file: {e}") from e

    @classmethod
    def open_cached(cls, path: str | os.PathLike[str]) -> GGUFFile:
        """`open`, reusing the header parsed last time while the file is unchanged.

        A node start reads one file's header for its config, tokenizer, part sizes
        and weights: parsing it once saves a few tenths of a second each time.
        Unchanged means the same path, device, inode, size and modification time
        (the downloader renames new files into place: a new inode). The result is a
        GGUFFile of its own sharing the parsed metadata and tensor index, which
        callers must not modify: a memory map one caller opens (`view_tensor`) is
        not kept alive by the cache.
        """
        p = Path(path)
        try:
            st = p.stat()
        except OSError:
            return cls.open(p)  # raises the error that names the problem
        return replace(_open_unchanged(p, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))

    def read_tensor(self, name: str) -> np.ndarray:
        """A copy of the tensor's data.

        Float types come back as their numpy dtype in numpy shape; block types
        (quantized, bf16) as `uint8[rows, bytes_per_row]`.
        """
        info = self.tensors[name]
        # A writable buffer, so callers may permute rows in place.
        buf = bytearray(info.nbytes)
        try:
            with self.path.open("rb") as f:
                f.seek(info.offset)
                got = f.readinto(buf)
        except OSError as e:
            raise ModelLoadError(f"{self.path}: cannot read tensor {name}: {e}") from e
        if got != info.nbytes:
            raise ModelLoadError(
                f"{self.path}: truncated: tensor {name} ends at byte "
                f"{info.offset + info.nbytes}, file now has {info.offset + got} bytes"
            )
        return _shape_raw(buf, info)

    def view_tensor(self, name: str) -> np.ndarray:
        """The tensor's data as a read-only view of the file's memory map (no copy).

        Same dtypes and shapes as `read_tensor`. Pages are read from the file when
        first touched, and count once however many views share them.
        """
        info = self.tensors[name]
        data = self._mapped
        if info.offset + info.nbytes > data.size:
            raise ModelLoadError(
                f"{self.path}: truncated: tensor {name} ends at byte "
                f"{info.offset + info.nbytes}, file now has {data.size} bytes"
            )
        return _shape_raw(data[info.offset : info.offset + info.nbytes], info)

    @cached_property
    def _mapped(self) -> np.ndarray:
        """The whole file, mapped read-only (the map lives as long as any view of it)."""
        try:
            with self.path.open("rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{self.path}: cannot map model file: {e}") from e
        return np.frombuffer(mapped, dtype=np.uint8)


# Few entries: a header holds the vocabulary (tens of MB for a model of 150k
# tokens), though never tensor data.
@lru_cache(maxsize=2)
def _open_unchanged(path: Path, dev: int, inode: int, size: int, mtime_ns: int) -> GGUFFile:
    """The header of `path` as it was with this identity (the key of the cache)."""
    return GGUFFile.open(path)


def release_pages(a: np.ndarray) -> None:
    """Drop the pages of a view of a mapped file from this process's memory.

    For weights an engine has copied into its own layout: the view stays valid (its
    pages are read again, from the page cache, if touched). No-op for other arrays.
    """
    root = a
    while isinstance(root.base, np.ndarray):
        root = root.base
    mapped = root.base.obj if isinstance(root.base, memoryview) else None
    if not isinstance(mapped, mmap.mmap) or a.size == 0:
        return
    start = a.ctypes.data - root.ctypes.data
    first = start - start % mmap.PAGESIZE
    mapped.madvise(mmap.MADV_DONTNEED, first, start + a.nbytes - first)


def _parse(cur: _Cursor, path: Path, size: int) -> GGUFFile:
    if size < 4 or cur.read(4, "magic") != _MAGIC:
        raise ModelLoadError(f"{path}: not a GGUF file (bad magic bytes)")
    version = cur.unpack("<I", "version")
    if version not in (2, 3):
        raise ModelLoadError(f"{path}: unsupported GGUF version {version} (need 2 or 3)")
    n_tensors = cur.unpack("<Q", "tensor count")
    n_kv = cur.unpack("<Q", "metadata count")
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        metadata[key] = cur.value(cur.unpack("<I", key), key)
    metadata_end = cur.pos
    raw_infos = [_read_tensor_info(cur, path, i) for i in range(n_tensors)]
    alignment = int(metadata.get("general.alignment", _DEFAULT_ALIGNMENT))
    if alignment <= 0 or alignment & (alignment - 1):
        raise ModelLoadError(f"{path}: invalid general.alignment {alignment}")
    data_start = -(-cur.pos // alignment) * alignment
    tensors: dict[str, TensorInfo] = {}
    for name, ggml_type, shape, rel_offset in raw_infos:
        info = _tensor_info(path, name, ggml_type, shape, data_start + rel_offset)
        if info.offset + info.nbytes > size:
            raise ModelLoadError(
                f"{path}: truncated: tensor {name} needs bytes {info.offset}..."
                f"{info.offset + info.nbytes}, file is {size} bytes"
            )
        tensors[name] = info
    return GGUFFile(path, size, version, metadata, tensors, metadata_end, data_start)


def parse_gguf_header(prefix: bytes, size: int, name: str) -> GGUFFile:
    """Parse a GGUF header from the first bytes of a `size`-byte file named `name`.

    For files not (yet) on disk, read with HTTP range requests. Raises
    GGUFHeaderIncomplete (with the length known to be needed so far) when
    `prefix` ends inside the header, ModelLoadError when it is not a valid GGUF
    header for a file of `size` bytes.
    """
    return _parse(_Cursor(io.BytesIO(prefix), size, Path(name)), Path(name), size)


def _read_tensor_info(
    cur: _Cursor, path: Path, index: int
) -> tuple[str, int, tuple[int, ...], int]:
    name = cur.string(f"tensor name #{index}")
    n_dims = cur.unpack("<I", name)
    if not 1 <= n_dims <= _MAX_DIMS:
        raise ModelLoadError(f"{path}: tensor {name} has {n_dims} dimensions")
    dims = [cur.unpack("<Q", name) for _ in range(n_dims)]
    ggml_type = cur.unpack("<I", name)
    offset = cur.unpack("<Q", name)
    return name, ggml_type, tuple(reversed(dims)), offset


def _tensor_info(
    path: Path, name: str, ggml_type: int, shape: tuple[int, ...], offset: int
) -> TensorInfo:
    try:
        qtype = GGMLQuantizationType(ggml_type)
        block_size, type_size = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError) as e:
        raise ModelLoadError(f"{path}: tensor {name} has unknown GGML type {ggml_type}") from e
    if shape[-1] % block_size:
        raise ModelLoadError(
            f"{path}: tensor {name} row length {shape[-1]} is not a multiple of "
            f"the {qtype.name} block size {block_size}"
        )
    nbytes = int(np.prod(shape[:-1], dtype=np.int64)) * (shape[-1] // block_size * type_size)
    return TensorInfo(name, qtype, shape, offset, nbytes)


_FLOAT_DTYPES = {
    GGMLQuantizationType.F32: np.float32,
    GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.F64: np.float64,
}


def _shape_raw(buf: bytearray | np.ndarray, info: TensorInfo) -> np.ndarray:
    dtype = _FLOAT_DTYPES.get(info.ggml_type)
    if dtype is not None:
        return np.frombuffer(buf, dtype=dtype).reshape(info.shape)
    block_size, type_size = GGML_QUANT_SIZES[info.ggml_type]
    bytes_per_row = info.shape[-1] // block_size * type_size
    return np.frombuffer(buf, dtype=np.uint8).reshape(*info.shape[:-1], bytes_per_row)
