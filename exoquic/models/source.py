"""Where a node's model comes from: a GGUF file or a Hugging Face directory.

`resolve_source` turns what a user typed (`--model`) into a `ModelSource`; the
source loads the config, a shard's weights and the tokenizer in one format.
Downloading from the hub is the `download` package's job; it produces a
Hugging Face directory that resolves like any other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from exoquic.models.config import ModelConfig
from exoquic.models.errors import ModelLoadError, UnknownModelError
from exoquic.models.generation_defaults import (
    FALLBACK_DEFAULTS,
    GenerationDefaults,
    read_generation_config,
)
from exoquic.models.gguf_file import GGUFFile
from exoquic.models.gguf_loader import load_gguf_shard, read_gguf_config
from exoquic.models.hf_loader import (
    CONFIG_FILE,
    DEFAULT_HF_WEIGHTS,
    HFWeights,
    load_hf_shard,
    read_hf_config,
    read_json,
)
from exoquic.models.registry import MODELS, bundled_gguf_path, find_model
from exoquic.models.shard import Shard
from exoquic.models.sizes import (
    BYTES_PER_WEIGHT,
    PartSizes,
    estimated_part_sizes,
    gguf_part_sizes,
    hf_bytes_per_weight,
)
from exoquic.models.tokenizer import Tokenizer
from exoquic.models.weights import ShardWeights

SourceKind = Literal["gguf", "hf"]


@dataclass(frozen=True)
class ModelSource:
    """A model's files on this machine: one GGUF file, or a Hugging Face directory."""

    model_id: str
    kind: SourceKind
    path: Path
    # What a Hugging Face checkpoint's float matrices become (see hf_loader); GGUF
    # blocks are always used as they are.
    weights: HFWeights = DEFAULT_HF_WEIGHTS

    def load_config(self) -> ModelConfig:
        if self.kind == "gguf":
            return read_gguf_config(self.path)
        return read_hf_config(self.path)

    def load_shard(self, shard: Shard) -> ShardWeights:
        """Read only `shard`'s weights (blocking: call it from a worker thread)."""
        if self.kind == "gguf":
            return load_gguf_shard(self.path, shard)
        return load_hf_shard(self.path, shard, self.weights)

    def part_sizes(self, config: ModelConfig) -> PartSizes:
        """Bytes each part of the model takes once loaded (what plans are made with)."""
        if self.kind == "hf":
            config_json = read_json(self.path / CONFIG_FILE)
            return estimated_part_sizes(config, hf_bytes_per_weight(config_json, self.weights))
        sizes = gguf_part_sizes(GGUFFile.open_cached(self.path), config.num_layers)
        if sizes is not None:
            return sizes
        entry = find_model(self.model_id)  # a shard's GGUF: the registry knows the whole
        if entry is not None:
            return PartSizes(entry.bytes_per_layer, entry.embed_bytes, entry.head_bytes)
        return estimated_part_sizes(config, BYTES_PER_WEIGHT["q8_0"])

    def load_generation_defaults(self) -> GenerationDefaults:
        """The registry's defaults for a known model, else a Hugging Face
        directory's generation_config.json, else greedy with a finite max_tokens."""
        entry = find_model(self.model_id)
        if entry is not None:
            return entry.defaults
        if self.kind == "hf":
            return read_generation_config(self.path)
        return FALLBACK_DEFAULTS

    def load_tokenizer(self) -> Tokenizer:
        if self.kind == "gguf":
            return Tokenizer.from_gguf(self.path)
        return Tokenizer.from_hf_dir(self.path)


def resolve_source(
    model_id_or_path: str | os.PathLike[str], weights: HFWeights = DEFAULT_HF_WEIGHTS
) -> ModelSource:
    """A registry id or alias (bundled weights), a `.gguf` file, or a Hugging Face directory
    (whose float matrices load as `weights` says).

    Registry names win over same-named paths in the working directory. Raises
    UnknownModelError when the name is neither, ModelLoadError when a path is
    not a usable model.
    """
    if isinstance(model_id_or_path, str):
        entry = find_model(model_id_or_path)
        if entry is not None:
            return ModelSource(entry.id, "gguf", bundled_gguf_path(entry.id))
    path = Path(model_id_or_path).expanduser()
    if path.is_file():
        return ModelSource(path.stem, "gguf", path)
    if path.is_dir():
        return replace(_directory_source(path), weights=weights)
    known = ", ".join(e.id for e in MODELS)
    raise UnknownModelError(
        f"unknown model {str(model_id_or_path)!r}: not a known model id ({known}), "
        "GGUF file or Hugging Face directory"
    )


def _directory_source(path: Path) -> ModelSource:
    if (path / CONFIG_FILE).is_file():
        return ModelSource(path.name, "hf", path)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return ModelSource(ggufs[0].stem, "gguf", ggufs[0])
    raise ModelLoadError(
        f"{path}: not a model directory (needs {CONFIG_FILE} with safetensors, "
        f"or a single .gguf file; found {len(ggufs)} .gguf files)"
    )
