"""The llama family: Llama 2 and 3.x, Mistral, TinyLlama, SmolLM.

Pre-norm decoder blocks (RMSNorm), RoPE on Q and K, grouped-query attention,
SwiGLU MLP. Mistral is a llama whose config may name a sliding window; GGUF
calls it "llama" too. llama.cpp's converter permuted the Q/K rows.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from exoquic.models.architectures.base import Architecture, Features, has_layer_tensor, refuse


def hf_features(d: Mapping[str, Any]) -> Features:
    refuse(d, "mlp_bias", "llama")
    return {"attention_bias": bool(d.get("attention_bias", False)), **sliding_window_limit(d)}


def gguf_features(metadata: Mapping[str, Any], tensors: Collection[str]) -> Features:
    return {"attention_bias": has_layer_tensor(tensors, "attn_q.bias")}


def sliding_window_limit(d: Mapping[str, Any]) -> Features:
    """Cap the context at a sliding window (Mistral 7B v0.1: 4096).

    Within the window, sliding-window attention equals full attention, so
    the engines' full attention is exact up to that length and never beyond.
    """
    window = d.get("sliding_window")
    if window is None or d.get("use_sliding_window") is False:
        return {}
    context = int(d.get("max_position_embeddings", 2048))
    return {"max_context": min(context, int(window))}


ARCH = Architecture(
    name="llama",
    hf_model_types=("llama", "mistral"),
    gguf_arch="llama",
    gguf_rope_permuted=True,
    hf_features=hf_features,
    gguf_features=gguf_features,
)
