"""Load a llama-family GGUF file as a `ModelConfig` and per-shard `ShardWeights`.

Names are mapped to the Hugging Face llama names, and GGUF's interleaved RoPE
row order of the Q/K projections is undone, so GGUF and safetensors weights
are interchangeable for the engines. Matrices of the GGML block types in
`exoquic.models.quant` (Q4_0 ... Q6_K, F16, BF16) stay in their file encoding
(`QuantizedTensor`) as read-only views of the file's memory map, except the Q/K
projections whose rows are reordered (copies); everything else (F32 norms,
other types) is read as float32.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from exoquic.models.config import ModelConfig, rope_scaling_from_gguf
from exoquic.models.errors import ModelLoadError
from exoquic.models.gguf_file import GGUFFile, release_pages
from exoquic.models.gguf_shard import shard_info, tied_flag
from exoquic.models.quant import quant_kind
from exoquic.models.shard import Shard
from exoquic.models.weights import (
    EMBED_NAME,
    HEAD_NAME,
    NORM_NAME,
    QuantizedTensor,
    ShardWeights,
    WeightArray,
    shard_tensor_names,
)

SUPPORTED_ARCHITECTURES = frozenset({"llama"})

# Hugging Face per-layer suffix (after `model.layers.{i}.`) -> GGUF suffix (after `blk.{i}.`).
LAYER_NAMES: dict[str, str] = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
EMBED, NORM, OUTPUT = "token_embd.weight", "output_norm.weight", "output.weight"
ROPE_FREQS = "rope_freqs.weight"  # llama.cpp's per-frequency divisors (Llama 3 scaling)


def gguf_tensor_name(hf_name: str, tied: bool) -> str:
    """The GGUF name of the tensor a Hugging Face llama name refers to."""
    if hf_name == EMBED_NAME:
        return EMBED
    if hf_name == NORM_NAME:
        return NORM
    if hf_name == HEAD_NAME:
        return EMBED if tied else OUTPUT
    _, _, index, suffix = hf_name.split(".", 3)  # model.layers.{i}.{suffix}
    return f"blk.{index}.{LAYER_NAMES[suffix]}"


def config_from_gguf(gf: GGUFFile) -> ModelConfig:
    """The `ModelConfig` held in a parsed GGUF header's metadata."""
    try:
        return _config_from_metadata(gf)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{gf.path}: invalid model metadata: {e}") from e


def _config_from_metadata(gf: GGUFFile) -> ModelConfig:
    md = gf.metadata
    arch = md.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ModelLoadError(
            f"{gf.path}: unsupported architecture {arch!r} "
            f"(supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))})"
        )

    def get(key: str, default: Any = None) -> Any:
        value = md.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelLoadError(f"{gf.path}: metadata {arch}.{key} is missing")
        return value

    hidden = int(get("embedding_length"))
    num_heads = int(get("attention.head_count"))
    vocab = md.get(f"{arch}.vocab_size") or len(md.get("tokenizer.ggml.tokens", ()))
    if not vocab:
        raise ModelLoadError(f"{gf.path}: cannot tell the vocabulary size")
    head_dim = int(get("attention.key_length", hidden // num_heads))
    rope_freqs = gf.read_tensor(ROPE_FREQS) if ROPE_FREQS in gf.tensors else None
    return ModelConfig(
        architecture=str(arch),
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_layers=int(get("block_count")),
        num_heads=num_heads,
        num_kv_heads=int(get("attention.head_count_kv", num_heads)),
        head_dim=head_dim,
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        max_context=int(get("context_length", 2048)),
        tie_word_embeddings=_tied(gf),
        rope_scaling=rope_scaling_from_gguf(md, str(arch), head_dim, rope_freqs),
    )


def _tied(gf: GGUFFile) -> bool:
    """No separate output head; a shard GGUF says so itself (its slice may lack the head)."""
    flag = tied_flag(gf.metadata)
    return flag if flag is not None else OUTPUT not in gf.tensors


def read_gguf_config(path: str | os.PathLike[str]) -> ModelConfig:
    """The model configuration stored in a GGUF file's metadata."""
    return config_from_gguf(GGUFFile.open(path))


def load_gguf_shard(path: str | os.PathLike[str], shard: Shard) -> ShardWeights:
    """Read only `shard`'s tensors from a GGUF file, in Hugging Face naming and layout.

    Raises ModelLoadError if the file is missing, corrupt, truncated, lacks a
    tensor, or describes a model with a different layer count than `shard`.
    """
    gf = GGUFFile.open(path)
    config = config_from_gguf(gf)
    if shard.num_layers != config.num_layers:
        raise ModelLoadError(
            f"{gf.path}: model has {config.num_layers} layers, shard expects {shard.num_layers}"
        )
    held = shard_info(gf.metadata, str(gf.path))
    if held is not None and not held.holds(shard.start_layer, shard.end_layer):
        raise ModelLoadError(
            f"{gf.path}: holds layers {held.start_layer}..{held.end_layer} only, "
            f"not {shard.start_layer}..{shard.end_layer}"
        )
    by_gguf_name: dict[str, WeightArray] = {}
    tensors: dict[str, WeightArray] = {}
    for hf_name in shard_tensor_names(shard):
        gguf_name = gguf_tensor_name(hf_name, config.tie_word_embeddings)
        # A tied head on a whole-model shard shares the embedding's array.
        if gguf_name not in by_gguf_name:
            by_gguf_name[gguf_name] = _load_tensor(gf, gguf_name, config)
        tensors[hf_name] = by_gguf_name[gguf_name]
    return ShardWeights(config=config, shard=shard, tensors=tensors)


def _load_tensor(gf: GGUFFile, name: str, config: ModelConfig) -> WeightArray:
    info = gf.tensors.get(name)
    if info is None:
        raise ModelLoadError(f"{gf.path}: tensor {name} is missing")
    kind = quant_kind(info.ggml_type)
    n_heads = _rope_heads(name, config)
    if kind is None or len(info.shape) != 2:
        data = _to_float32(gf.read_tensor(name), info.ggml_type)
        return unpermute_rope_rows(data, n_heads) if n_heads else data
    rows, cols = info.shape
    # The file's own bytes (f16 as two bytes a value), mapped, not read.
    blocks = gf.view_tensor(name).view(np.uint8).reshape(rows, -1)
    if n_heads:
        # Rows move, so Q and K are copied once, reordered, out of the map; the
        # map's pages of them are then dropped from this process.
        mapped, blocks = blocks, unpermute_rope_rows(blocks, n_heads)
        release_pages(mapped)
    return QuantizedTensor(kind=kind, blocks=blocks, shape=(rows, cols))


def _rope_heads(name: str, config: ModelConfig) -> int:
    """Heads whose rows GGUF permuted for interleaved RoPE (0: not permuted)."""
    if name.endswith(".attn_q.weight"):
        return config.num_heads
    if name.endswith(".attn_k.weight"):
        return config.num_kv_heads
    return 0


def _to_float32(raw: np.ndarray, ggml_type: GGMLQuantizationType) -> np.ndarray:
    if ggml_type == GGMLQuantizationType.F32:
        return raw
    if raw.dtype != np.uint8:
        return raw.astype(np.float32)
    # bf16 and other block formats (k-quants...) come out of `gguf` dequantized.
    return np.asarray(gguf_dequantize(raw, ggml_type), dtype=np.float32)


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved -> half-split RoPE order).

    llama.cpp's converter does `w.reshape(n_head, 2, rows_per_head // 2, ...)
    .swapaxes(1, 2)`. Only rows move, so this works on a float matrix and on a
    block-quantized one alike (blocks run along the input dimension).
    """
    rows = w.shape[0]
    half = rows // n_heads // 2
    restored = w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return np.ascontiguousarray(restored)


def permute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's Q/K row permutation (half-split -> interleaved), the inverse of the above."""
    half = w.shape[0] // n_heads // 2
    permuted = w.reshape(n_heads, 2, half, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return np.ascontiguousarray(permuted)
