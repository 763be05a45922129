"""Phi-3 and Phi-3.5 (mini, medium): the llama block with fused projections and longrope.

q, k and v are one matrix (`self_attn.qkv_proj`, rows q | k | v) and so are the
MLP's gate and up (`mlp.gate_up_proj`, rows gate | up); GGUF keeps them fused
too (`attn_qkv`, and `ffn_up` holding gate and up). The 128k-context models
scale RoPE with "longrope" (`exoquic.models.longrope`), which GGUF carries as
`rope_factors_short` / `rope_factors_long` tensors. RoPE is NEOX-style, so
llama.cpp's converter leaves the rows in Hugging Face's order.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from exoquic.models.architectures.base import Architecture, Features, UnsupportedArchitectureError
from exoquic.models.architectures.llama import sliding_window_limit


def hf_features(d: Mapping[str, Any]) -> Features:
    # Phi-4-mini is a "phi3" rotating only 3/4 of each head; the engines rotate whole heads.
    partial = float(d.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise UnsupportedArchitectureError(
            f"phi3 with partial_rotary_factor={partial} (Phi-4-mini) is not supported"
        )
    return {"fused_projections": True, **sliding_window_limit(d)}


def gguf_features(metadata: Mapping[str, Any], tensors: Collection[str]) -> Features:
    # llama.cpp writes the rotated dimensions as rope.dimension_count (Phi-4-mini: 96 of 128).
    heads = int(metadata["phi3.attention.head_count"])
    head_dim = int(metadata["phi3.embedding_length"]) // heads
    rotated = int(metadata.get("phi3.rope.dimension_count", head_dim))
    if rotated != head_dim:
        raise UnsupportedArchitectureError(
            f"phi3 rotating {rotated} of {head_dim} dimensions a head (Phi-4-mini) is not supported"
        )
    return {"fused_projections": True}


ARCH = Architecture(
    name="phi3",
    hf_model_types=("phi3",),
    gguf_arch="phi3",
    gguf_rope_permuted=False,
    hf_features=hf_features,
    gguf_features=gguf_features,
    gguf_names={
        "self_attn.qkv_proj.weight": "attn_qkv.weight",
        "mlp.gate_up_proj.weight": "ffn_up.weight",
    },
)
