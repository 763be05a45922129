"""In-memory weights of one shard, in Hugging Face naming and layout.

Loaders (GGUF, safetensors) produce a `ShardWeights`; engines consume it. Keys
are the Hugging Face names with *global* layer indices, for example
`model.layers.12.self_attn.q_proj.weight`; which tensors a layer has depends on
the family's features (`layer_suffixes`). Matrices are `(out_features,
in_features)` and Q/K rows are in the Hugging Face half-split RoPE order (GGUF's
interleaved order is undone by the loader). Only the shard's own layers are
present, plus `model.embed_tokens.weight` on the first shard and
`model.norm.weight` + `lm_head.weight` on the last (for tied embeddings
`lm_head.weight` is the embedding matrix).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from exoquic.models.affine import AffineTensor
from exoquic.models.config import ModelConfig
from exoquic.models.shard import Shard

# GGML block formats kept as they are in the file (see `exoquic.models.quant`).
QuantKind = Literal[
    "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k", "iq4_nl", "iq4_xs",
    "f16", "bf16",
]  # fmt: skip


@dataclass(frozen=True)
class QuantizedTensor:
    """A matrix kept in its GGML block-quantized form.

    `blocks` is `uint8[rows, bytes_per_row]`, the raw GGUF bytes: each row of
    the logical `(rows, cols)` matrix is `cols / VALUES_PER_BLOCK[kind]`
    consecutive GGML blocks (32 values for the legacy kinds, 256 for K-quants,
    1 for f16/bf16). It may be a read-only view of a memory-mapped file. Engines
    that can compute on a kind read the blocks directly; others call
    `dequantize()`.
    """

    kind: QuantKind
    blocks: np.ndarray
    shape: tuple[int, int]

    def dequantize(self) -> np.ndarray:
        from exoquic.models.quant import dequantize

        return dequantize(self)


# Matrices: float arrays, GGML blocks, or MLX affine codes (mlx-community checkpoints).
WeightArray = np.ndarray | QuantizedTensor | AffineTensor

EMBED_NAME = "model.embed_tokens.weight"
NORM_NAME = "model.norm.weight"
HEAD_NAME = "lm_head.weight"
# The tensors of layer i are `model.layers.{i}.{suffix}`: these for every family,
# plus those of the features the model's config turns on (`layer_suffixes`).
LAYER_SUFFIXES: tuple[str, ...] = (
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)


ATTENTION_BIAS_SUFFIXES = (
    "self_attn.q_proj.bias",
    "self_attn.k_proj.bias",
    "self_attn.v_proj.bias",
)
QK_NORM_SUFFIXES = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")
# phi3: q, k, v stacked in one matrix (rows q | k | v), gate and up in another (gate | up).
FUSED_LAYER_SUFFIXES: tuple[str, ...] = (
    "input_layernorm.weight",
    "self_attn.qkv_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_up_proj.weight",
    "mlp.down_proj.weight",
)
# gemma2: norms of the MLP's input (pre_) and of the MLP's output (post_); its
# `post_attention_layernorm` normalises the attention output.
SANDWICH_NORM_SUFFIXES = ("pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight")


def layer_suffixes(config: ModelConfig | None = None) -> tuple[str, ...]:
    """The per-layer tensor suffixes of a model (None: a plain llama's)."""
    fused = config is not None and config.fused_projections
    suffixes = FUSED_LAYER_SUFFIXES if fused else LAYER_SUFFIXES
    if config is not None and config.sandwich_norms:
        suffixes += SANDWICH_NORM_SUFFIXES
    if config is not None and config.attention_bias:
        suffixes += ATTENTION_BIAS_SUFFIXES
    if config is not None and config.qk_norm:
        suffixes += QK_NORM_SUFFIXES
    return suffixes


def shard_tensor_names(shard: Shard, config: ModelConfig | None = None) -> list[str]:
    """The Hugging Face names of every tensor a `ShardWeights` for `shard` holds.

    `config` decides the per-layer tensors (`layer_suffixes`); None means a plain llama.
    """
    names = [EMBED_NAME] if shard.is_first else []
    suffixes = layer_suffixes(config)
    names += [f"model.layers.{i}.{s}" for i in shard.layers() for s in suffixes]
    if shard.is_last:
        names += [NORM_NAME, HEAD_NAME]
    return names


@dataclass
class ShardWeights:
    config: ModelConfig
    shard: Shard
    tensors: dict[str, WeightArray] = field(default_factory=dict)

    def dense(self, name: str) -> np.ndarray:
        """The named tensor as a float32 array, dequantizing if needed."""
        t = self.tensors[name]
        if isinstance(t, QuantizedTensor | AffineTensor):
            return t.dequantize()
        return np.asarray(t, dtype=np.float32)

    def layer(self, index: int, suffix: str) -> WeightArray:
        """`layer(3, "mlp.up_proj.weight")` -> tensor `model.layers.3.mlp.up_proj.weight`."""
        return self.tensors[f"model.layers.{index}.{suffix}"]

    def layer_dense(self, index: int, suffix: str) -> np.ndarray:
        """A layer's tensor as float32 (norms, biases)."""
        return self.dense(f"model.layers.{index}.{suffix}")
