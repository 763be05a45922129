"""What a model family is, apart from engine code: its names and its config fields.

An `Architecture` says which `config.json` `model_type`s and which GGUF
`general.architecture` it reads, which `ModelConfig` fields (features) it sets
from either source, how GGUF names its layer tensors, and whether llama.cpp's
converter permuted its Q/K rows. Everything here is pure: no I/O, no engine.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

# ModelConfig field name -> value: what a family reads beyond the common fields.
Features = dict[str, Any]
# config.json mapping -> features.
HFFeatures = Callable[[Mapping[str, Any]], Features]
# (GGUF metadata, GGUF tensor names) -> features; metadata keys are `{gguf_arch}.…`.
GGUFFeatures = Callable[[Mapping[str, Any], Collection[str]], Features]

# Hugging Face per-layer suffix (after `model.layers.{i}.`) -> GGUF suffix (after
# `blk.{i}.`), as llama.cpp's converter names them for the llama-shaped families.
GGUF_LAYER_NAMES: Mapping[str, str] = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}


class UnsupportedArchitectureError(ValueError):
    """A model of a family (or with a feature) that exoquic does not implement."""


def _no_features(*_: Any) -> Features:
    return {}


@dataclass(frozen=True)
class Architecture:
    """One model family (see the module docstring and docs/architectures.md)."""

    name: str  # `ModelConfig.architecture`
    hf_model_types: tuple[str, ...]  # config.json `model_type` values read as this family
    gguf_arch: str  # GGUF `general.architecture`
    # llama.cpp's converter interleaves the rows of each Q/K head for its "normal"
    # RoPE (llama, mistral); NEOX-style families (qwen2, qwen3) keep the HF order.
    gguf_rope_permuted: bool
    hf_features: HFFeatures = _no_features
    gguf_features: GGUFFeatures = _no_features
    # Per-layer GGUF names that differ from `GGUF_LAYER_NAMES`.
    gguf_names: Mapping[str, str] = field(default_factory=dict)

    def gguf_layer_name(self, hf_suffix: str) -> str:
        """The GGUF suffix of a per-layer Hugging Face suffix."""
        name = self.gguf_names.get(hf_suffix) or GGUF_LAYER_NAMES.get(hf_suffix)
        if name is None:
            raise KeyError(f"{self.name}: no GGUF name for layer tensor {hf_suffix!r}")
        return name


def has_layer_tensor(tensor_names: Collection[str], gguf_suffix: str) -> bool:
    """Whether a GGUF file's first layer holds `blk.0.{gguf_suffix}`."""
    return f"blk.0.{gguf_suffix}" in tensor_names


def refuse(d: Mapping[str, Any], key: str, family: str) -> None:
    """Refuse a config.json that turns on a feature exoquic does not run."""
    if d.get(key):
        raise UnsupportedArchitectureError(f"{family} with {key}={d[key]!r} is not supported")
