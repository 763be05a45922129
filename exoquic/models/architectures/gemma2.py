"""Gemma 2: the llama block with Gemma's embedding scale, norms, GeLU and soft-caps.

- token embeddings are multiplied by sqrt(hidden_size);
- every RMSNorm multiplies by (1 + weight); llama.cpp's converter stores
  (1 + weight) in the GGUF, so the GGUF loader subtracts the 1 again
  (`norm_weight_offset`);
- four norms a layer: before and after attention, before and after the MLP
  (`sandwich_norms`);
- the gated MLP uses GeLU's tanh approximation instead of SiLU;
- attention scores are scaled by 1/sqrt(query_pre_attn_scalar) and soft-capped,
  `cap * tanh(score / cap)`, and so are the final logits;
- even layers attend over the last `sliding_window` positions only, odd
  layers over everything;
- the output head is the embedding (tied), always in Hugging Face checkpoints;
  a GGUF with its own `output.weight` uses it, as llama.cpp does.

RoPE is NEOX-style, so llama.cpp's converter leaves the Q/K rows as they are.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

from exoquic.models.architectures.base import Architecture, Features, UnsupportedArchitectureError

_GELU_TANH = frozenset({"gelu_pytorch_tanh", "gelu_tanh"})
_27B_LAYERS = 46  # llama.cpp tells Gemma 2 27B by its layer count (see `_gguf_query_scalar`)


def hf_features(d: Mapping[str, Any]) -> Features:
    act = d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in _GELU_TANH:
        raise UnsupportedArchitectureError(f"gemma2 with hidden_activation={act!r}")
    layers = int(d["num_hidden_layers"])
    head_dim = int(d.get("head_dim") or int(d["hidden_size"]) // int(d["num_attention_heads"]))
    # Gemma2ForCausalLM always ties its head, whatever config.json says (or omits).
    return {"tie_word_embeddings": True} | _features(
        hidden=int(d["hidden_size"]),
        query_scalar=float(d.get("query_pre_attn_scalar") or head_dim),
        attn_cap=d.get("attn_logit_softcapping"),
        final_cap=d.get("final_logit_softcapping"),
        window=d.get("sliding_window"),
        sliding=_hf_sliding_layers(d, layers),
    )


def gguf_features(metadata: Mapping[str, Any], tensors: Collection[str]) -> Features:
    layers = int(metadata["gemma2.block_count"])
    return _features(
        hidden=int(metadata["gemma2.embedding_length"]),
        query_scalar=_gguf_query_scalar(metadata, layers),
        attn_cap=metadata.get("gemma2.attn_logit_softcapping"),
        final_cap=metadata.get("gemma2.final_logit_softcapping"),
        window=metadata.get("gemma2.attention.sliding_window"),
        sliding=tuple(range(0, layers, 2)),
    )


def _features(
    hidden: int,
    query_scalar: float,
    attn_cap: Any,
    final_cap: Any,
    window: Any,
    sliding: tuple[int, ...],
) -> Features:
    if query_scalar <= 0:
        raise ValueError(f"gemma2 query_pre_attn_scalar must be positive, got {query_scalar}")
    return {
        "norm_weight_offset": 1.0,
        "embedding_multiplier": math.sqrt(hidden),
        "hidden_act": "gelu_tanh",
        "sandwich_norms": True,
        "query_pre_attn_scalar": query_scalar,
        "attn_logit_softcapping": _cap(attn_cap, "attn_logit_softcapping"),
        "final_logit_softcapping": _cap(final_cap, "final_logit_softcapping"),
        "sliding_window": None if window is None else _window(window),
        "sliding_layers": () if window is None else sliding,
    }


def _hf_sliding_layers(d: Mapping[str, Any], layers: int) -> tuple[int, ...]:
    """transformers' rule: `layer_types` if given, else every even layer slides."""
    types = d.get("layer_types")
    if types is None:
        return tuple(range(0, layers, 2))
    if len(types) != layers:
        raise ValueError(f"gemma2 layer_types lists {len(types)} layers, not {layers}")
    return tuple(i for i, t in enumerate(types) if t == "sliding_attention")


def _gguf_query_scalar(metadata: Mapping[str, Any], layers: int) -> float:
    """llama.cpp's rule (GGUF has no key for it): head_dim, but hidden / heads for 27B.

    exoquic's converter (tools/hf_to_gguf.py) writes the value under its own key.
    """
    given = metadata.get("gemma2.attention.query_pre_attn_scalar")
    if given is not None:
        return float(given)
    hidden, heads = metadata["gemma2.embedding_length"], metadata["gemma2.attention.head_count"]
    if layers == _27B_LAYERS:
        return float(int(hidden) // int(heads))
    return float(metadata.get("gemma2.attention.key_length") or int(hidden) // int(heads))


def _cap(value: Any, what: str) -> float | None:
    if value is None:
        return None
    cap = float(value)
    if not cap > 0:
        raise ValueError(f"gemma2 {what} must be positive, got {value!r}")
    return cap


def _window(value: Any) -> int:
    window = int(value)
    if window <= 0:
        raise ValueError(f"gemma2 sliding_window must be positive, got {value!r}")
    return window


ARCH = Architecture(
    name="gemma2",
    hf_model_types=("gemma2",),
    gguf_arch="gemma2",
    gguf_rope_permuted=False,
    hf_features=hf_features,
    gguf_features=gguf_features,
    gguf_names={
        "post_attention_layernorm.weight": "post_attention_norm.weight",
        "pre_feedforward_layernorm.weight": "ffn_norm.weight",
        "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    },
)
