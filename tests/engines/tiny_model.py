"""Tiny random llama models (dense or GGML-quantized) for the engine tests of every engine."""

from __future__ import annotations

from collections.abc import Callable

import gguf
import numpy as np

from exoquic.models.config import ModelConfig
from exoquic.models.quant import GGML_TYPES
from exoquic.models.shard import Shard
from exoquic.models.weights import (
    EMBED_NAME,
    HEAD_NAME,
    QuantizedTensor,
    QuantKind,
    ShardWeights,
    WeightArray,
    shard_tensor_names,
)

TINY = ModelConfig(
    architecture="llama",
    vocab_size=96,
    hidden_size=64,
    intermediate_size=128,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    max_context=256,
    tie_word_embeddings=True,
)

# Quantization of each layer's matrices: every kind on every matrix shape. Uniform
# layers exercise tinygrad's fused q/k/v and gate/up products, the mixed one the
# unfused path (as in GGUFs that mix kinds).
LAYER_KINDS: list[tuple[QuantKind, ...]] = [
    ("q4_1",),
    ("q4_0", "q8_0", "q4_1"),
    ("q4_0",),
    ("q8_0",),
]

WeightsFor = Callable[[Shard], ShardWeights]


def random_tensors(
    config: ModelConfig, quantized: bool = False, seed: int = 0, plain: bool = False
) -> dict[str, WeightArray]:
    """Every tensor of a whole model; matrices GGML-quantized if asked (embeddings as Q8_0).

    By default norms are noisy and embeddings larger, so kernels that mixed them
    up would differ; plain=True gives unit norms and fan-in-scaled embeddings.
    """
    rng = np.random.default_rng(seed)
    d, f, hd = config.hidden_size, config.intermediate_size, config.head_dim
    shapes = {
        "self_attn.q_proj.weight": (config.num_heads * hd, d),
        "self_attn.k_proj.weight": (config.num_kv_heads * hd, d),
        "self_attn.v_proj.weight": (config.num_kv_heads * hd, d),
        "self_attn.o_proj.weight": (d, config.num_heads * hd),
        "mlp.gate_proj.weight": (f, d),
        "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f),
    }
    tensors: dict[str, WeightArray] = {}
    for i, name in enumerate(shard_tensor_names(Shard.whole("tiny", config.num_layers))):
        if name.endswith("norm.weight"):
            noise = np.zeros(d) if plain else 0.1 * rng.standard_normal(d)
            tensors[name] = (1 + noise).astype(np.float32)
            continue
        if name == HEAD_NAME and config.tie_word_embeddings:
            tensors[name] = tensors[EMBED_NAME]
            continue
        suffix = name.split(".", 3)[-1]
        shape = shapes.get(suffix, (config.vocab_size, d))
        dense = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
        if name == EMBED_NAME and not plain:
            dense *= 4  # embeddings are not scaled down by fan-in
        if not quantized:
            tensors[name] = dense
            continue
        kind: QuantKind = "q8_0"
        if name.startswith("model.layers."):
            kinds = LAYER_KINDS[int(name.split(".")[2]) % len(LAYER_KINDS)]
            kind = kinds[i % len(kinds)]
        blocks = gguf.quants.quantize(dense, GGML_TYPES[kind])
        tensors[name] = QuantizedTensor(kind=kind, blocks=blocks, shape=shape)
    return tensors


def weights_factory(config: ModelConfig, quantized: bool) -> WeightsFor:
    """`ShardWeights` for any shard of one random model."""
    tensors = random_tensors(config, quantized)

    def weights_for(shard: Shard) -> ShardWeights:
        return ShardWeights(config, shard, {n: tensors[n] for n in shard_tensor_names(shard)})

    return weights_for
