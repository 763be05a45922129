"""Qwen2 and Qwen2.5: the llama block with biases on the Q, K and V projections.

RoPE is NEOX-style (rotating the two halves of each head, as Hugging Face
stores it), so llama.cpp's converter leaves the Q/K rows as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exoquic.models.architectures.base import Architecture, Features
from exoquic.models.architectures.llama import sliding_window_limit


def hf_features(d: Mapping[str, Any]) -> Features:
    # transformers' Qwen2Attention always has q/k/v biases (no config switch).
    return {"attention_bias": True, **sliding_window_limit(d)}


ARCH = Architecture(
    name="qwen2",
    hf_model_types=("qwen2",),
    gguf_arch="qwen2",
    gguf_rope_permuted=False,
    hf_features=hf_features,
    gguf_features=lambda metadata, tensors: {"attention_bias": True},
)
