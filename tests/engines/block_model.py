"""A small llama whose matrices are K-quants, 5-bit blocks and 16-bit floats, as in
a Q4_K_M GGUF: the engines' block-format tests run it against the float64 reference."""

from __future__ import annotations

import numpy as np
from models.ggml_blocks import random_blocks

from exoquic.models.config import ModelConfig
from exoquic.models.shard import Shard
from exoquic.models.weights import (
    EMBED_NAME,
    HEAD_NAME,
    ShardWeights,
    WeightArray,
    shard_tensor_names,
)

CONFIG = ModelConfig(
    architecture="llama",
    vocab_size=64,
    hidden_size=256,
    intermediate_size=512,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=64,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    max_context=128,
    tie_word_embeddings=True,
)
# Like llama.cpp's Q4_K_M: mostly Q4_K, some Q6_K / Q5_K, and 5-bit legacy blocks; and
# 16-bit floats.
KINDS = {
    "self_attn.q_proj.weight": ("q4_k", "q5_k"),
    "self_attn.k_proj.weight": ("q4_k", "q5_k"),
    "self_attn.v_proj.weight": ("q6_k", "q5_0"),
    "self_attn.o_proj.weight": ("q4_k", "q5_1"),
    "mlp.gate_proj.weight": ("q4_k", "bf16"),
    "mlp.up_proj.weight": ("q4_k", "f16"),
    "mlp.down_proj.weight": ("q6_k", "q5_k"),
}
KV = CONFIG.num_kv_heads * CONFIG.head_dim
D, F = CONFIG.hidden_size, CONFIG.intermediate_size
SHAPES = {
    "self_attn.q_proj.weight": (D, D),
    "self_attn.k_proj.weight": (KV, D),
    "self_attn.v_proj.weight": (KV, D),
    "self_attn.o_proj.weight": (D, D),
    "mlp.gate_proj.weight": (F, D),
    "mlp.up_proj.weight": (F, D),
    "mlp.down_proj.weight": (D, F),
}
PROMPT = np.array([5, 17, 3, 60, 42, 0, 61, 9, 33], dtype=np.int32)


def weights() -> ShardWeights:
    """The whole model, its blocks drawn from a fixed seed."""
    shard = Shard.whole("blocks", CONFIG.num_layers)
    rng = np.random.default_rng(0)
    tensors: dict[str, WeightArray] = {}
    for i, name in enumerate(shard_tensor_names(shard)):
        if name.endswith("norm.weight"):
            tensors[name] = (1 + 0.1 * rng.standard_normal(D)).astype(np.float32)
        elif name == HEAD_NAME:
            tensors[name] = tensors[EMBED_NAME]
        elif name.startswith("model.layers."):
            layer, suffix = int(name.split(".")[2]), name.split(".", 3)[3]
            rows, cols = SHAPES[suffix]
            tensors[name] = random_blocks(KINDS[suffix][layer], rows, cols, i, 1 / np.sqrt(cols))
        else:  # the embedding (and tied head)
            tensors[name] = random_blocks("q6_k", CONFIG.vocab_size, D, i)
    return ShardWeights(CONFIG, shard, tensors)
