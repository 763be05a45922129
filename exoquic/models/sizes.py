"""How many bytes a model's parts take once loaded: the plan's input.

A plan gives each device as many layers as its memory holds, so these sizes
must be what the engines will really hold: a GGUF's own tensor sizes (its
blocks are used as they are), and for safetensors the size of what the
loader turns each matrix into (`hf_loader`'s `weights` choice).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from exoquic.models.config import ModelConfig
from exoquic.models.gguf_file import GGUFFile

# Bytes a parameter takes in each GGML kind the safetensors loader can produce.
BYTES_PER_WEIGHT = {
    "q8_0": 34 / 32,
    "q4_k": 144 / 256,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "f16": 2.0,
    "f32": 4.0,
}
_LAYER = re.compile(r"blk\.(\d+)\.")
_HEAD = ("output.weight", "output_norm.weight")


@dataclass(frozen=True)
class PartSizes:
    """Bytes of one layer (the mean over the layers), the embedding and the head."""

    bytes_per_layer: int
    embed_bytes: int
    head_bytes: int


def gguf_part_sizes(gf: GGUFFile, num_layers: int) -> PartSizes | None:
    """The file's own tensor sizes, or None if some layer has no tensors in it
    (a GGUF of a shard, or of the header alone)."""
    per_layer = [0] * num_layers
    for name, info in gf.tensors.items():
        match = _LAYER.match(name)
        if match and int(match.group(1)) < num_layers:
            per_layer[int(match.group(1))] += info.nbytes
    if not all(per_layer) or "token_embd.weight" not in gf.tensors:
        return None
    embed = gf.tensors["token_embd.weight"].nbytes
    head = sum(gf.tensors[n].nbytes for n in _HEAD if n in gf.tensors)
    if "output.weight" not in gf.tensors:
        head += embed  # a tied head is the embedding, held by the last shard too
    return PartSizes(-(-sum(per_layer) // num_layers), embed, head)


def estimated_part_sizes(config: ModelConfig, bytes_per_weight: float) -> PartSizes:
    """Sizes from the config's shapes, every matrix at `bytes_per_weight`."""
    d, f = config.hidden_size, config.intermediate_size
    attention = d * config.head_dim * (2 * config.num_heads + 2 * config.num_kv_heads)
    per_layer = int(bytes_per_weight * (attention + 3 * d * f)) + 4 * 2 * d
    embed = int(bytes_per_weight * config.vocab_size * d)
    return PartSizes(per_layer, embed, embed + 4 * d)


def hf_bytes_per_weight(config_json: dict[str, Any], weights: str) -> float:
    """What a Hugging Face checkpoint's matrices cost once `hf_loader` has read them."""
    quantization = config_json.get("quantization")
    if isinstance(quantization, dict) and "bits" in quantization:
        # mlx-community: the codes, plus a float32 scale and bias per group.
        group = int(quantization.get("group_size", 64))
        return int(quantization["bits"]) / 8 + 8 / group
    stored_f32 = str(config_json.get("torch_dtype", config_json.get("dtype", ""))) == "float32"
    if weights == "auto":
        return BYTES_PER_WEIGHT["f32" if stored_f32 else "q8_0"]
    if weights == "keep":
        return BYTES_PER_WEIGHT["f32" if stored_f32 else "f16"]
    return BYTES_PER_WEIGHT[weights]
