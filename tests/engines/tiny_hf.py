"""Tiny random models of the phi3 and gemma2 families, in Hugging Face layout.

Each is a `config.json` plus one float32 `model.safetensors` with the family's
own tensor names (phi3's fused `qkv_proj` / `gate_up_proj`, gemma2's four norms
a layer), small enough to run in a test and shaped so that mistakes show:
grouped-query attention, rope factors far from 1, soft-caps that bite,
a sliding window shorter than the test prompt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

VOCAB = 96

# Phi-3.5-mini's shape in miniature: untied head, longrope scaling whose
# original context (32) is shorter than the model's (128), so the factor set
# depends on the context served. head_dim is hidden / heads, as mlx-lm assumes.
PHI3: dict[str, Any] = {
    "architectures": ["Phi3ForCausalLM"],
    "model_type": "phi3",
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 128,
    "original_max_position_embeddings": 32,
    "rope_scaling": {
        "type": "longrope",
        "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.1, 3.8],
        "long_factor": [1.0, 1.5, 2.5, 4.0, 6.0, 9.0, 13.0, 18.0],
    },
    "sliding_window": 262144,
    "tie_word_embeddings": False,
}

# gemma-2-2b's features in miniature: head_dim (32) is not hidden / heads,
# query_pre_attn_scalar (24) is not head_dim, soft-caps small enough to change
# random logits, and a sliding window (5) shorter than the test prompts.
GEMMA2: dict[str, Any] = {
    "architectures": ["Gemma2ForCausalLM"],
    "model_type": "gemma2",
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 256,
    "query_pre_attn_scalar": 24,
    "attn_logit_softcapping": 2.0,
    "final_logit_softcapping": 3.0,
    "sliding_window": 5,
    "hidden_activation": "gelu_pytorch_tanh",
    "tie_word_embeddings": True,
}


def layer_shapes(config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Suffix after `model.layers.{i}.` -> shape, for one layer of the family."""
    d, f = config["hidden_size"], config["intermediate_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = config.get("head_dim") or d // heads
    norms = ["input_layernorm", "post_attention_layernorm"]
    if config["model_type"] == "phi3":
        return {
            **{f"{n}.weight": (d,) for n in norms},
            "self_attn.qkv_proj.weight": ((heads + 2 * kv) * hd, d),
            "self_attn.o_proj.weight": (d, heads * hd),
            "mlp.gate_up_proj.weight": (2 * f, d),
            "mlp.down_proj.weight": (d, f),
        }
    norms += ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    return {
        **{f"{n}.weight": (d,) for n in norms},
        "self_attn.q_proj.weight": (heads * hd, d),
        "self_attn.k_proj.weight": (kv * hd, d),
        "self_attn.v_proj.weight": (kv * hd, d),
        "self_attn.o_proj.weight": (d, heads * hd),
        "mlp.gate_proj.weight": (f, d),
        "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f),
    }


def random_tensors(config: dict[str, Any], seed: int = 0) -> dict[str, np.ndarray]:
    """Every tensor of the model, float32, named as the family's checkpoints name them."""
    rng = np.random.default_rng(seed)
    d = config["hidden_size"]
    # gemma2 multiplies by (1 + w), so its norm weights sit around 0.
    norm_centre = 0.0 if config["model_type"] == "gemma2" else 1.0

    def norm(size: int) -> np.ndarray:
        return (norm_centre + 0.1 * rng.standard_normal(size)).astype(np.float32)

    def matrix(shape: tuple[int, ...]) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    tensors = {"model.embed_tokens.weight": matrix((config["vocab_size"], d))}
    for i in range(config["num_hidden_layers"]):
        for suffix, shape in layer_shapes(config).items():
            name = f"model.layers.{i}.{suffix}"
            tensors[name] = norm(shape[0]) if len(shape) == 1 else matrix(shape)
    tensors["model.norm.weight"] = norm(d)
    if not config["tie_word_embeddings"]:
        tensors["lm_head.weight"] = matrix((config["vocab_size"], d))
    return tensors


def write_hf_model(
    directory: Path, config: dict[str, Any], seed: int = 0, **overrides: Any
) -> Path:
    """A Hugging Face model directory of a random model of `config` (with `overrides`)."""
    config = {**config, **overrides}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    save_file(random_tensors(config, seed), str(directory / "model.safetensors"))
    return directory
