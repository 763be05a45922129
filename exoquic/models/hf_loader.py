"""Load a Hugging Face checkpoint directory (config.json + safetensors) of a known family.

Only the safetensors files that hold the shard's tensors are opened, and only
the shard's tensors are read. What a matrix becomes is the caller's choice
(`HFWeights`):

- "auto" (the default): bfloat16 / float16 matrices are quantized to Q8_0 as
  they are read, about a byte per parameter instead of four; a float32
  checkpoint is taken as a wish for full precision and stays float32;
- "q8_0", "q4_k", "q4_0", "q4_1": every float matrix is quantized to that
  GGML kind (Q4_K by `exoquic.models.quantize`);
- "keep": bfloat16 / float16 matrices stay 16-bit (`QuantizedTensor` kinds
  "bf16" / "f16", their bytes as stored), float32 stays float32;
- "f32": everything becomes float32.

Vectors (norms) are always float32, and a matrix whose rows are not whole
blocks of the chosen kind stays as "keep" would leave it. Quantized matrices
are what the GGUF loader hands the engines, so both formats run the same way.

An mlx-community checkpoint (config.json has `quantization`) is already
quantized: its matrices stay as they are (`AffineTensor`, see
`exoquic.models.affine`) whatever `weights` says.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast, get_args

import numpy as np

from exoquic.models.affine import AffineTensor
from exoquic.models.config import ModelConfig
from exoquic.models.errors import ModelLoadError
from exoquic.models.quant import VALUES_PER_BLOCK
from exoquic.models.quantize import quantize
from exoquic.models.safetensors_file import SafetensorsFile
from exoquic.models.shard import Shard
from exoquic.models.weights import (
    EMBED_NAME,
    HEAD_NAME,
    QuantizedTensor,
    QuantKind,
    ShardWeights,
    WeightArray,
    shard_tensor_names,
)

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"

HFWeights = Literal["auto", "q8_0", "q4_k", "q4_0", "q4_1", "keep", "f32"]
HF_WEIGHTS: tuple[str, ...] = get_args(HFWeights)
DEFAULT_HF_WEIGHTS: HFWeights = "auto"
_HALF_KINDS: dict[str, QuantKind] = {"BF16": "bf16", "F16": "f16"}
# Rows that are not whole 256-value super-blocks take a 32-value format instead,
# as llama.cpp's quantizer does (it picks Q5_0, which we cannot encode; Q4_1 is
# the nearest we can).
_NARROW_ROW_FALLBACK: dict[QuantKind, QuantKind] = {"q4_k": "q4_1"}
_QUANTIZED: dict[str, QuantKind] = {"q8_0": "q8_0", "q4_k": "q4_k", "q4_0": "q4_0", "q4_1": "q4_1"}


def as_hf_weights(text: str) -> HFWeights:
    """`text` as an `HFWeights` choice; ValueError naming the choices otherwise."""
    for choice in HF_WEIGHTS:
        if text == choice:
            return cast(HFWeights, choice)
    raise ValueError(f"weights must be one of {', '.join(HF_WEIGHTS)}, not {text!r}")


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
    try:
        return ModelConfig.from_hf_dict(d)
    except KeyError as e:
        raise ModelLoadError(f"{path}: missing key {e.args[0]!r}") from e
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{path}: invalid value: {e}") from e


def load_hf_shard(
    directory: str | os.PathLike[str], shard: Shard, weights: HFWeights = DEFAULT_HF_WEIGHTS
) -> ShardWeights:
    """Read `shard`'s tensors from a Hugging Face directory, stored as `weights` says.

    Raises ModelLoadError if config.json or a needed safetensors file is
    missing or corrupt, a tensor is missing, or the layer count differs.
    """
    if weights not in HF_WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(HF_WEIGHTS)}, not {weights!r}")
    root = Path(directory)
    config = read_hf_config(root)
    if shard.num_layers != config.num_layers:
        raise ModelLoadError(
            f"{root}: model has {config.num_layers} layers, shard expects {shard.num_layers}"
        )
    locations = tensor_locations(root)
    quantization = read_quantization(root)
    files: dict[str, SafetensorsFile] = {}

    def open_file(tensor: str) -> SafetensorsFile:
        if tensor not in locations:
            raise ModelLoadError(f"{root}: tensor {tensor} is in no safetensors file")
        filename = locations[tensor]
        if filename not in files:
            files[filename] = SafetensorsFile.open(root / filename)
        return files[filename]

    tensors: dict[str, WeightArray] = {}
    for name in shard_tensor_names(shard, config):
        source = _source_name(name, config, locations)
        if source in tensors:  # tied head next to the embedding: share the array
            tensors[name] = tensors[source]
            continue
        module = source.removesuffix(".weight")
        if f"{module}.scales" in locations:
            tensors[name] = _read_affine(open_file, module, quantization)
        else:
            tensors[name] = _read(open_file(source), source, weights)
    return ShardWeights(config=config, shard=shard, tensors=tensors)


def read_quantization(root: Path) -> dict[str, Any]:
    """config.json's mlx-community `quantization` object ({} for an unquantized model)."""
    path = root / CONFIG_FILE
    d = read_json(path)
    q = d.get("quantization") or d.get("quantization_config") or {}
    if not isinstance(q, dict):
        raise ModelLoadError(f"{path}: quantization must be an object, not {q!r}")
    return q


def _read_affine(
    open_file: Callable[[str], SafetensorsFile], module: str, quantization: dict[str, Any]
) -> AffineTensor:
    """One mlx-community matrix: `module.weight` codes with its scales and biases."""
    settings = quantization.get(module, quantization)
    if not isinstance(settings, dict) or "bits" not in settings:
        raise ModelLoadError(f"{module} has scales but config.json gives it no quantization bits")
    mode = settings.get("mode", "affine")
    if mode != "affine":
        raise ModelLoadError(f"{module}: MLX quantization mode {mode!r} is not supported")
    f = open_file(f"{module}.weight")
    halves = [open_file(f"{module}.{part}") for part in ("scales", "biases")]
    try:
        return AffineTensor(
            bits=int(settings["bits"]),
            group_size=int(settings.get("group_size", 64)),
            weight=f.read_raw(f"{module}.weight"),
            scales=halves[0].read_float32(f"{module}.scales"),
            biases=halves[1].read_float32(f"{module}.biases"),
        )
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{f.path}: {module}: {e}") from e


def _source_name(name: str, config: ModelConfig, locations: dict[str, str]) -> str:
    """The stored tensor that provides `name` (the embedding, for a tied head)."""
    if name == HEAD_NAME and (config.tie_word_embeddings or HEAD_NAME not in locations):
        return EMBED_NAME
    return name


def _read(f: SafetensorsFile, name: str, weights: HFWeights) -> WeightArray:
    if name not in f.tensors:
        raise ModelLoadError(f"{f.path}: tensor {name} is listed in the index but missing")
    entry = f.tensors[name]
    dense = f.read_float32(name)
    if dense.ndim != 2 or weights == "f32":
        return dense
    kind = _target_kind(entry.dtype, weights)
    if kind is not None and dense.shape[1] % VALUES_PER_BLOCK[kind] != 0:
        kind = _NARROW_ROW_FALLBACK.get(kind)
    if kind is not None and dense.shape[1] % VALUES_PER_BLOCK[kind] == 0:
        return quantize(dense, kind)
    if entry.dtype in _HALF_KINDS and weights != "f32":
        return _half(dense, _HALF_KINDS[entry.dtype])
    return dense


def _target_kind(dtype: str, weights: HFWeights) -> QuantKind | None:
    """The GGML kind a matrix stored as `dtype` is quantized to, or None to keep it."""
    if weights == "auto":
        return "q8_0" if dtype in _HALF_KINDS else None
    return _QUANTIZED.get(weights)


def _half(dense: np.ndarray, kind: QuantKind) -> QuantizedTensor:
    """A float32 matrix that came from 16 bits, back in those 16 bits (exact)."""
    rows, cols = dense.shape
    # bfloat16 is the top half of each float32, which is all the value had.
    raw = dense.astype("<f2") if kind == "f16" else (dense.view(np.uint32) >> 16).astype("<u2")
    return QuantizedTensor(kind, raw.view(np.uint8).reshape(rows, cols * 2), (rows, cols))


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
