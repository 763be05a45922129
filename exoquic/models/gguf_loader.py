"""Load a GGUF file as a `ModelConfig` and per-shard `ShardWeights`.

The file's `general.architecture` picks the family (`models.architectures`).
Names are mapped to the Hugging Face names, and for families whose Q/K rows
llama.cpp's converter interleaved (llama, mistral) that RoPE row order is
undone, so GGUF and safetensors weights are interchangeable for the engines.
Matrices of the GGML block types in `exoquic.models.quant` (Q4_0 ... Q6_K,
IQ4_NL, IQ4_XS, F16, BF16) stay in their file encoding (`QuantizedTensor`) as read-only views
of the file's memory map, except permuted Q/K projections whose rows are
reordered (copies); everything else (F32 norms, biases, other types) is read
as float32.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from exoquic.models import architectures
from exoquic.models.architectures import Architecture, UnsupportedArchitectureError
from exoquic.models.config import ModelConfig, RopeScaling, rope_scaling_from_gguf
from exoquic.models.errors import ModelLoadError
from exoquic.models.gguf_file import GGUFFile, release_pages
from exoquic.models.gguf_shard import shard_info, source_tensor_names
from exoquic.models.longrope import longrope_from_gguf
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

# Hugging Face per-layer suffix -> GGUF suffix of the llama family (others: their
# `Architecture.gguf_layer_name`).
LAYER_NAMES: dict[str, str] = dict(architectures.GGUF_LAYER_NAMES)
EMBED, NORM, OUTPUT = "token_embd.weight", "output_norm.weight", "output.weight"
ROPE_FREQS = "rope_freqs.weight"  # llama.cpp's per-frequency divisors (Llama 3 scaling)
# Phi-3's longrope divisors, within and beyond the original context.
ROPE_FACTORS_SHORT, ROPE_FACTORS_LONG = "rope_factors_short.weight", "rope_factors_long.weight"
# Per-layer GGUF suffixes whose rows llama.cpp permuted, and the head count to undo it.
_ROPE_ROWS = {"attn_q.weight": "q", "attn_q.bias": "q", "attn_k.weight": "k", "attn_k.bias": "k"}


def gguf_tensor_name(hf_name: str, tied: bool, arch: Architecture | None = None) -> str:
    """The GGUF name of the tensor a Hugging Face name refers to (arch None: llama)."""
    if hf_name == EMBED_NAME:
        return EMBED
    if hf_name == NORM_NAME:
        return NORM
    if hf_name == HEAD_NAME:
        return EMBED if tied else OUTPUT
    _, _, index, suffix = hf_name.split(".", 3)  # model.layers.{i}.{suffix}
    family = arch or architectures.by_name("llama")
    return f"blk.{index}.{family.gguf_layer_name(suffix)}"


def config_from_gguf(gf: GGUFFile) -> ModelConfig:
    """The `ModelConfig` held in a parsed GGUF header's metadata."""
    try:
        return _config_from_metadata(gf)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"{gf.path}: invalid model metadata: {e}") from e


def gguf_architecture(gf: GGUFFile) -> Architecture:
    """The family of a parsed GGUF file (ModelLoadError if exoquic has none for it)."""
    try:
        return architectures.for_gguf_arch(str(gf.metadata.get("general.architecture")))
    except UnsupportedArchitectureError as e:
        raise ModelLoadError(f"{gf.path}: {e}") from e


def _config_from_metadata(gf: GGUFFile) -> ModelConfig:
    md = gf.metadata
    family = gguf_architecture(gf)
    arch = family.gguf_arch

    def get(key: str, default: Any = None) -> Any:
        value = md.get(f"{arch}.{key}", default)
        if value is None:
            raise ModelLoadError(f"{gf.path}: metadata {arch}.{key} is missing")
        return value

    try:
        architectures.refuse_experts(md.get(f"{arch}.expert_count"))
    except UnsupportedArchitectureError as e:
        raise ModelLoadError(f"{gf.path}: {e}") from e
    hidden = int(get("embedding_length"))
    num_heads = int(get("attention.head_count"))
    vocab = md.get(f"{arch}.vocab_size") or len(md.get("tokenizer.ggml.tokens", ()))
    if not vocab:
        raise ModelLoadError(f"{gf.path}: cannot tell the vocabulary size")
    head_dim = int(get("attention.key_length", hidden // num_heads))
    # The whole file's tensors, also for a shard cut from it (which lacks most).
    names = source_tensor_names(gf.metadata, gf.tensors.keys())
    fields: dict[str, Any] = dict(
        architecture=family.name,
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
        tie_word_embeddings=OUTPUT not in names,
        rope_scaling=_rope_scaling(gf, arch, head_dim),
    )
    return ModelConfig(**(fields | family.gguf_features(md, names)))


def _rope_scaling(gf: GGUFFile, arch: str, head_dim: int) -> RopeScaling | None:
    """Longrope from its two factor tensors (phi3), else the llama-style forms."""
    if ROPE_FACTORS_LONG in gf.tensors or ROPE_FACTORS_SHORT in gf.tensors:
        for name in (ROPE_FACTORS_SHORT, ROPE_FACTORS_LONG):
            if name not in gf.tensors:
                raise ModelLoadError(f"{gf.path}: longrope factors without tensor {name}")
        short, long = gf.read_tensor(ROPE_FACTORS_SHORT), gf.read_tensor(ROPE_FACTORS_LONG)
        return longrope_from_gguf(gf.metadata, arch, short, long)
    rope_freqs = gf.read_tensor(ROPE_FREQS) if ROPE_FREQS in gf.tensors else None
    return rope_scaling_from_gguf(gf.metadata, arch, head_dim, rope_freqs)


def read_gguf_config(path: str | os.PathLike[str]) -> ModelConfig:
    """The model configuration stored in a GGUF file's metadata."""
    return config_from_gguf(GGUFFile.open_cached(path))


def load_gguf_shard(path: str | os.PathLike[str], shard: Shard) -> ShardWeights:
    """Read only `shard`'s tensors from a GGUF file, in Hugging Face naming and layout.

    Raises ModelLoadError if the file is missing, corrupt, truncated, lacks a
    tensor, or describes a model with a different layer count than `shard`.
    """
    gf = GGUFFile.open_cached(path)
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
    family = architectures.by_name(config.architecture)
    by_gguf_name: dict[str, WeightArray] = {}
    tensors: dict[str, WeightArray] = {}
    for hf_name in shard_tensor_names(shard, config):
        gguf_name = gguf_tensor_name(hf_name, config.tie_word_embeddings, family)
        # A tied head on a whole-model shard shares the embedding's array.
        if gguf_name not in by_gguf_name:
            n_heads = _rope_heads(gguf_name, config) if family.gguf_rope_permuted else 0
            by_gguf_name[gguf_name] = _load_tensor(gf, gguf_name, n_heads)
            if config.norm_weight_offset and gguf_name.endswith("norm.weight"):
                # llama.cpp's converter stored (offset + w) (gemma2: 1 + w); HF layout is w.
                by_gguf_name[gguf_name] = _as_float32(by_gguf_name[gguf_name]) - (
                    config.norm_weight_offset
                )
        tensors[hf_name] = by_gguf_name[gguf_name]
    return ShardWeights(config=config, shard=shard, tensors=tensors)


def _load_tensor(gf: GGUFFile, name: str, n_heads: int) -> WeightArray:
    """One tensor; `n_heads` > 0: its rows are RoPE-permuted in that many heads."""
    info = gf.tensors.get(name)
    if info is None:
        raise ModelLoadError(f"{gf.path}: tensor {name} is missing")
    kind = quant_kind(info.ggml_type)
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
    """Heads whose rows a permuting converter interleaved for RoPE (0: none)."""
    which = _ROPE_ROWS.get(name.split(".", 2)[-1]) if name.startswith("blk.") else None
    if which == "q":
        return config.num_heads
    if which == "k":
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


def _as_float32(t: WeightArray) -> np.ndarray:
    return t.dequantize() if isinstance(t, QuantizedTensor) else np.asarray(t, np.float32)
