"""phi3 and gemma2 config.json / GGUF metadata read into ModelConfig features."""

from __future__ import annotations

from typing import Any

import pytest

from exoquic.models.architectures import UnsupportedArchitectureError, gemma2, phi3
from exoquic.models.config import ModelConfig
from exoquic.models.shard import Shard
from exoquic.models.weights import shard_tensor_names

# google/gemma-2-2b-it's config.json (the keys exoquic reads; it has no tie_word_embeddings).
GEMMA_2_2B: dict[str, Any] = {
    "model_type": "gemma2",
    "vocab_size": 256000,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 8192,
    "query_pre_attn_scalar": 256,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "sliding_window": 4096,
    "hidden_activation": "gelu_pytorch_tanh",
}
# microsoft/Phi-3.5-mini-instruct's, with 48 made-up factors of each kind.
PHI_35_MINI: dict[str, Any] = {
    "model_type": "phi3",
    "vocab_size": 32064,
    "hidden_size": 3072,
    "intermediate_size": 8192,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096,
    "rope_scaling": {"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [4.0] * 48},
    "sliding_window": 262144,
    "tie_word_embeddings": False,
}


def test_gemma_2_2b() -> None:
    c = ModelConfig.from_hf_dict(GEMMA_2_2B)
    assert c.architecture == "gemma2" and c.tie_word_embeddings
    assert c.norm_weight_offset == 1.0 and c.embedding_multiplier == 48.0
    assert c.hidden_act == "gelu_tanh" and c.sandwich_norms
    assert c.attention_scale == 1 / 16
    assert (c.attn_logit_softcapping, c.final_logit_softcapping) == (50.0, 30.0)
    assert [c.window_of(i) for i in range(4)] == [4096, None, 4096, None]
    names = shard_tensor_names(Shard("g", 0, 0, 26), c)
    assert "model.layers.0.post_feedforward_layernorm.weight" in names


def test_gemma2_layer_types_say_which_layers_slide() -> None:
    types = ["full_attention", "sliding_attention"] * 13
    c = ModelConfig.from_hf_dict(GEMMA_2_2B | {"layer_types": types})
    assert c.sliding_layers == tuple(range(1, 26, 2))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_activation": "gelu"}, "hidden_activation='gelu'"),
        ({"layer_types": ["full_attention"]}, "layer_types lists 1 layers"),
        ({"attn_logit_softcapping": 0}, "attn_logit_softcapping must be positive"),
        ({"sliding_window": -1}, "sliding_window must be positive"),
    ],
)
def test_gemma2_bad_configs_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_hf_dict(GEMMA_2_2B | change)


def gemma2_metadata(layers: int, hidden: int, heads: int, head_dim: int) -> dict[str, Any]:
    return {
        "gemma2.block_count": layers,
        "gemma2.embedding_length": hidden,
        "gemma2.attention.head_count": heads,
        "gemma2.attention.key_length": head_dim,
        "gemma2.attn_logit_softcapping": 50.0,
        "gemma2.final_logit_softcapping": 30.0,
        "gemma2.attention.sliding_window": 4096,
    }


def test_gemma2_gguf_query_scale_follows_llama_cpp() -> None:
    # 9B: head_dim 256 = query_pre_attn_scalar; 27B: hidden / heads = 144, not head_dim 128.
    nine = gemma2.gguf_features(gemma2_metadata(42, 3584, 16, 256), ())
    assert nine["query_pre_attn_scalar"] == 256.0
    big = gemma2.gguf_features(gemma2_metadata(46, 4608, 32, 128), ())
    assert big["query_pre_attn_scalar"] == 144.0
    own_key = gemma2_metadata(3, 64, 4, 32) | {"gemma2.attention.query_pre_attn_scalar": 24.0}
    assert gemma2.gguf_features(own_key, ())["query_pre_attn_scalar"] == 24.0
    assert big["sliding_layers"] == tuple(range(0, 46, 2))


def test_phi_35_mini() -> None:
    c = ModelConfig.from_hf_dict(PHI_35_MINI)
    assert c.architecture == "phi3" and c.fused_projections and c.head_dim == 96
    assert c.max_context == 131072  # its sliding window (262144) caps nothing
    names = shard_tensor_names(Shard("p", 3, 3, 32), c)
    assert names == [
        f"model.layers.3.{s}"
        for s in (
            "input_layernorm.weight",
            "self_attn.qkv_proj.weight",
            "self_attn.o_proj.weight",
            "post_attention_layernorm.weight",
            "mlp.gate_up_proj.weight",
            "mlp.down_proj.weight",
        )
    ]


def test_phi4_mini_partial_rotation_is_refused() -> None:
    with pytest.raises(UnsupportedArchitectureError, match="partial_rotary_factor"):
        ModelConfig.from_hf_dict(PHI_35_MINI | {"partial_rotary_factor": 0.75})
    metadata = {
        "phi3.attention.head_count": 24,
        "phi3.embedding_length": 3072,
        "phi3.rope.dimension_count": 96,
    }
    with pytest.raises(UnsupportedArchitectureError, match="96 of 128"):
        phi3.gguf_features(metadata, ())
    assert phi3.gguf_features(metadata | {"phi3.rope.dimension_count": 128}, ()) == {
        "fused_projections": True
    }
