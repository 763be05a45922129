"""Qwen3: the llama block with a per-head RMSNorm on Q and K (before RoPE), no biases.

Its `head_dim` (128) is set explicitly and need not equal hidden / heads.
RoPE is NEOX-style, so llama.cpp's converter leaves the Q/K rows as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from exoquic.models.architectures.base import Architecture, Features
from exoquic.models.architectures.llama import sliding_window_limit


def hf_features(d: Mapping[str, Any]) -> Features:
    return {
        "attention_bias": bool(d.get("attention_bias", False)),
        "qk_norm": True,
        **sliding_window_limit(d),
    }


ARCH = Architecture(
    name="qwen3",
    hf_model_types=("qwen3",),
    gguf_arch="qwen3",
    gguf_rope_permuted=False,
    hf_features=hf_features,
    gguf_features=lambda metadata, tensors: {"qk_norm": True},
)
