"""Load a Hugging Face llama checkpoint directory (config.json + safetensors).

Only the safetensors files that hold the shard's tensors are opened, and only
the shard's tensors are read. Every float dtype becomes float32, the layout
engines get from the GGUF loader after dequantization.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from exoquic.models.config import ModelConfig
from exoquic.models.errors import ModelLoadError
from exoquic.models.safetensors_file import SafetensorsFile
from exoquic.models.shard import Shard
from exoquic.models.weights import (
    EMBED_NAME,
    HEAD_NAME,
    ShardWeights,
    WeightArray,
    shard_tensor_names,
)

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SUPPORTED_MODEL_TYPES = frozenset({"llama"})


def read_json(path: Path) -> Any:
    """Parse a JSON file, raising ModelLoadError naming the file on any problem."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise ModelLoadError(f"{path}: file not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: cannot parse JSON: {e}") from e


def read_hf_config(directory: str | os.PathLike[str]) -> ModelConfig:
    """The `ModelConfig` of a Hugging Face model directory's `config.json`."""
    path = Path(directory) / CONFIG_FILE
    d = read_json(path)
    if not isinstance(d, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    model_type = d.get("model_type", "llama")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(f"{path}: unsupported model_type {model_type!r}")
    try:
        return ModelConfig.from_hf_dict(d)
    except KeyError as e:
        raise ModelLoadError(f"{path}: missing key {e.args[0]!r}") from e
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{path}: invalid value: {e}") from e


def load_hf_shard(directory: str | os.PathLike[str], shard: Shard) -> ShardWeights:
    """Read `shard`'s tensors from a Hugging Face directory as float32 arrays.

    Raises ModelLoadError if config.json or a needed safetensors file is
    missing or corrupt, a tensor is missing, or the layer count differs.
    """
    root = Path(directory)
    config = read_hf_config(root)
    if shard.num_layers != config.num_layers:
        raise ModelLoadError(
            f"{root}: model has {config.num_layers} layers, shard expects {shard.num_layers}"
        )
    locations = tensor_locations(root)
    files: dict[str, SafetensorsFile] = {}
    tensors: dict[str, WeightArray] = {}
    for name in shard_tensor_names(shard):
        source = _source_name(name, config, locations)
        if source in tensors:  # tied head next to the embedding: share the array
            tensors[name] = tensors[source]
            continue
        if source not in locations:
            raise ModelLoadError(f"{root}: tensor {source} is in no safetensors file")
        filename = locations[source]
        if filename not in files:
            files[filename] = SafetensorsFile.open(root / filename)
        tensors[name] = _read(files[filename], source)
    return ShardWeights(config=config, shard=shard, tensors=tensors)


def _source_name(name: str, config: ModelConfig, locations: dict[str, str]) -> str:
    """The stored tensor that provides `name` (the embedding, for a tied head)."""
    if name == HEAD_NAME and (config.tie_word_embeddings or HEAD_NAME not in locations):
        return EMBED_NAME
    return name


def _read(f: SafetensorsFile, name: str) -> np.ndarray:
    if name not in f.tensors:
        raise ModelLoadError(f"{f.path}: tensor {name} is listed in the index but missing")
    return f.read_float32(name)


def tensor_locations(root: Path) -> dict[str, str]:
    """Tensor name -> safetensors file name, from the index or the files' headers."""
    index = root / INDEX_FILE
    if index.exists():
        data = read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"{index}: no weight_map object")
        return {str(k): _safe_filename(index, v) for k, v in weight_map.items()}
    paths = sorted(root.glob("*.safetensors"))
    if not paths:
        raise ModelLoadError(f"{root}: no *.safetensors files and no {INDEX_FILE}")
    return {name: p.name for p in paths for name in SafetensorsFile.open(p).tensors}


def _safe_filename(index: Path, value: object) -> str:
    # The index comes from a download: a file name must not reach outside the model directory.
    name = str(value)
    if Path(name).name != name or name in ("", ".", ".."):
        raise ModelLoadError(f"{index}: invalid file name {name!r} in weight_map")
    return name
