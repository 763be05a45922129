"""GGUF files holding a slice of a model's layers, cut from a full GGUF by the downloader.

Also the model's metadata file: the same keys without a layer range, and no
layer tensors (config, tokenizer and chat template for a node without layers yet).

A shard GGUF keeps the source file's metadata verbatim (architecture, layer
count, tokenizer, chat template) and adds the `exoquic.shard.*` keys below; its
tensors are the source's tensors of the layer range (plus the embedding, norm
and head where the range needs them), byte for byte. The loader reads it like
any GGUF, using these keys where the missing tensors would otherwise mislead
it (a middle shard has no `output.weight`, which would read as "tied", nor the
`blk.0.*` tensors a family's optional features are read from).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from exoquic.models.errors import ModelLoadError

KEY_PREFIX = "exoquic.shard."
SOURCE_FILE = "exoquic.shard.source_file"  # the full GGUF's file name in its repository
SOURCE_SIZE = "exoquic.shard.source_size"  # its size in bytes
SOURCE_SHA256 = "exoquic.shard.source_sha256"  # the hub's sha256 of the whole file, if known
START_LAYER = "exoquic.shard.start_layer"  # first layer held (inclusive)
END_LAYER = "exoquic.shard.end_layer"  # last layer held (inclusive)
SOURCE_TENSORS = "exoquic.shard.source_tensors"  # every tensor name of the full GGUF


@dataclass(frozen=True)
class ShardInfo:
    """What a shard GGUF's `exoquic.shard.*` keys say."""

    source_file: str
    source_size: int
    source_sha256: str | None
    start_layer: int
    end_layer: int

    def holds(self, start_layer: int, end_layer: int) -> bool:
        return self.start_layer <= start_layer and end_layer <= self.end_layer


def source_tensor_names(metadata: Mapping[str, Any], present: Iterable[str]) -> set[str]:
    """The tensor names of the whole GGUF: recorded in a file cut from it, else `present`.

    What tells "tied head or not" and a family's optional tensors (biases,
    norms) apart, which a slice lacking `output.weight` or layer 0 cannot.
    """
    recorded = metadata.get(SOURCE_TENSORS)
    return {str(n) for n in recorded} if isinstance(recorded, list) else set(present)


def shard_info(metadata: Mapping[str, Any], where: str) -> ShardInfo | None:
    """The shard keys of a GGUF's metadata; None for a whole-model file."""
    if START_LAYER not in metadata:
        return None
    try:
        return ShardInfo(
            source_file=str(metadata[SOURCE_FILE]),
            source_size=int(metadata[SOURCE_SIZE]),
            source_sha256=str(metadata[SOURCE_SHA256]) if SOURCE_SHA256 in metadata else None,
            start_layer=int(metadata[START_LAYER]),
            end_layer=int(metadata[END_LAYER]),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{where}: incomplete exoquic.shard metadata: {e}") from e
