"""Cutting a shard out of a single-file GGUF: which bytes to fetch, where they go (pure).

Given a full GGUF's parsed header and a layer range, `plan_slice` says which
byte ranges of the full file hold the shard's tensors (`Run`s: tensors that lie
next to each other in the source are fetched as one range) and where each
lands in the shard file, and builds the shard file's header: the source's
metadata bytes verbatim plus the `exoquic.shard.*` keys, and the kept tensors'
infos with offsets into the new, aligned data section. No I/O here.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

from exoquic.download.errors import DownloadError
from exoquic.models import gguf_shard
from exoquic.models.gguf_file import GGUFFile, TensorInfo
from exoquic.models.shard import Shard

_LAYER = re.compile(r"^blk\.(\d+)\.")
EMBED_PREFIX = "token_embd."  # the embedding (and its norm, in some architectures)
OUTPUT_PREFIX = "output"  # output.weight and output_norm.*
HEAD = "output.weight"
_STRING, _U32, _U64, _ARRAY = 8, 4, 10, 9


@dataclass(frozen=True)
class SourceFile:
    """The full GGUF a shard is cut from, as its repository lists it."""

    name: str
    size: int
    sha256: str | None  # the hub's hash of the whole file (None when it gives none)


@dataclass(frozen=True)
class Run:
    """Source bytes `source_start..source_end` (end exclusive) go to `dest_start` in the shard."""

    source_start: int
    source_end: int
    dest_start: int

    @property
    def nbytes(self) -> int:
        return self.source_end - self.source_start


@dataclass(frozen=True)
class SliceLayout:
    """The shard file: its header, then the runs' bytes at their offsets (zeros between)."""

    header: bytes  # padded to the alignment: the data section starts right after it
    runs: tuple[Run, ...]
    size: int
    tensors: dict[str, tuple[int, int]]  # kept tensor -> (offset in the shard, nbytes)

    @property
    def fetched_bytes(self) -> int:
        """Bytes of the source file the runs need (the header aside)."""
        return sum(r.nbytes for r in self.runs)


def tensor_wanted(name: str, shard: Shard | None, *, tied: bool) -> bool:
    """Whether `shard` needs GGUF tensor `name`.

    Layer tensors go with their layer; the embedding to the first shard (and to
    the last when the head is tied to it); the output norm and head to the last.
    Anything else (`rope_freqs.weight`...) is small and model-wide: every shard
    gets it, and so does the metadata file (`shard` None), which holds nothing else.
    """
    match = _LAYER.match(name)
    if shard is None:
        return not (match or name.startswith((EMBED_PREFIX, OUTPUT_PREFIX)))
    if match:
        return shard.start_layer <= int(match.group(1)) <= shard.end_layer
    if name.startswith(EMBED_PREFIX):
        return shard.is_first or (shard.is_last and tied)
    if name.startswith(OUTPUT_PREFIX):
        return shard.is_last
    return True


def check_layout(gf: GGUFFile) -> None:
    """The tensor table of a source header must describe a sane file: offsets
    aligned, in the data section, within the file, and no two tensors overlapping."""
    alignment = gf.alignment
    previous: TensorInfo | None = None
    for info in sorted(gf.tensors.values(), key=lambda t: t.offset):
        if info.offset < gf.data_start or (info.offset - gf.data_start) % alignment:
            raise DownloadError(f"{gf.path}: tensor {info.name} has a misaligned offset")
        if previous is not None and info.offset < previous.offset + previous.nbytes:
            raise DownloadError(f"{gf.path}: tensors {previous.name} and {info.name} overlap")
        previous = info
    if previous is not None and previous.offset + previous.nbytes > gf.size:
        raise DownloadError(f"{gf.path}: tensor {previous.name} runs past the end of the file")


def plan_slice(
    gf: GGUFFile, header_prefix: bytes, shard: Shard | None, source: SourceFile
) -> SliceLayout:
    """The shard file for `shard` of the GGUF whose header `gf` was parsed from `header_prefix`.

    With `shard` None, the model's metadata file: every metadata key (config,
    tokenizer, chat template) and the small model-wide tensors, no layer: what a
    node reads before a plan gives it layers.
    """
    if any(key.startswith(gguf_shard.KEY_PREFIX) for key in gf.metadata):
        raise DownloadError(f"{source.name} is itself a shard; cut shards from the full file")
    check_layout(gf)
    tied = HEAD not in gf.tensors
    ordered = sorted(gf.tensors.values(), key=lambda t: t.offset)
    groups = _contiguous_groups(ordered, lambda t: tensor_wanted(t.name, shard, tied=tied))
    alignment = gf.alignment
    relative: dict[str, int] = {}  # tensor -> offset in the shard's data section
    spans: list[tuple[int, int, int]] = []  # (source start, source end, data offset)
    at = 0
    for group in groups:
        start, end = group[0].offset, group[-1].offset + group[-1].nbytes
        for info in group:  # source offsets are aligned, so these stay aligned
            relative[info.name] = at + info.offset - start
        spans.append((start, end, at))
        at = _align(at + end - start, alignment)
    kept = [info for group in groups for info in group]
    header = _header(gf, header_prefix, kept, relative, shard, source)
    runs = tuple(Run(s, e, len(header) + offset) for s, e, offset in spans)
    size = runs[-1].dest_start + runs[-1].nbytes if runs else len(header)
    tensors = {info.name: (len(header) + relative[info.name], info.nbytes) for info in kept}
    return SliceLayout(header, runs, size, tensors)


def _contiguous_groups(
    ordered: list[TensorInfo], wanted: Callable[[TensorInfo], bool]
) -> list[list[TensorInfo]]:
    """Maximal runs of wanted tensors with no unwanted tensor between them."""
    groups: list[list[TensorInfo]] = []
    current: list[TensorInfo] = []
    for info in ordered:
        if wanted(info):
            current.append(info)
        elif current:
            groups.append(current)
            current = []
    if current:
        groups.append(current)
    return groups


def _header(
    gf: GGUFFile,
    prefix: bytes,
    kept: list[TensorInfo],
    relative: dict[str, int],
    shard: Shard | None,
    source: SourceFile,
) -> bytes:
    extra = _shard_keys(shard, source, sorted(gf.tensors))
    out = bytearray(prefix[:8])  # magic and version, as in the source
    out += struct.pack("<QQ", len(kept), len(gf.metadata) + len(extra))
    out += prefix[24 : gf.metadata_end]  # the source's metadata, byte for byte
    for key, (vtype, value) in extra.items():
        out += _string(key) + struct.pack("<I", vtype) + _value(vtype, value)
    for info in kept:
        dims = tuple(reversed(info.shape))  # GGUF lists dims innermost first
        out += _string(info.name) + struct.pack("<I", len(dims))
        out += struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", int(info.ggml_type), relative[info.name])
    out += bytes(_align(len(out), gf.alignment) - len(out))
    return bytes(out)


def _shard_keys(
    shard: Shard | None, source: SourceFile, tensor_names: list[str]
) -> dict[str, tuple[int, object]]:
    keys: dict[str, tuple[int, object]] = {
        gguf_shard.SOURCE_FILE: (_STRING, source.name),
        gguf_shard.SOURCE_SIZE: (_U64, source.size),
        gguf_shard.SOURCE_TENSORS: (_ARRAY, tensor_names),
    }
    if shard is not None:
        keys[gguf_shard.START_LAYER] = (_U32, shard.start_layer)
        keys[gguf_shard.END_LAYER] = (_U32, shard.end_layer)
    if source.sha256 is not None:
        keys[gguf_shard.SOURCE_SHA256] = (_STRING, source.sha256)
    return keys


def _string(text: str) -> bytes:
    data = text.encode("utf-8")
    return struct.pack("<Q", len(data)) + data


def _value(vtype: int, value: object) -> bytes:
    if vtype == _STRING:
        return _string(str(value))
    if vtype == _ARRAY:  # of strings
        assert isinstance(value, list)
        return struct.pack("<IQ", _STRING, len(value)) + b"".join(_string(v) for v in value)
    fmt = {_U32: "<I", _U64: "<Q"}[vtype]
    return struct.pack(fmt, value)


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment
