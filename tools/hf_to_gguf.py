"""Convert a (small) Hugging Face checkpoint directory into a GGUF file, as llama.cpp does.

    uv run python tools/hf_to_gguf.py MODEL_DIR OUT.gguf [--type f32|f16|q8_0]

Written for tests and experiments with tiny models: it reads config.json and the
safetensors weights, and writes what llama.cpp's `convert_hf_to_gguf.py` writes
for the families exoquic runs (llama, mistral, qwen2, qwen3, phi3, gemma2): the
hyper-parameters as `{arch}.*` metadata, tensor names from the `gguf` package's
own name map, the Q/K rows of llama / mistral permuted for llama.cpp's
interleaved RoPE (NEOX-style families are left as they are), Llama 3 RoPE
scaling as a `rope_freqs.weight` tensor, Phi-3's longrope as
`rope_factors_short/long` tensors with the original context and attention
factor, and Gemma 2's soft-caps and window, with its norm weights stored as
(1 + w) as llama.cpp stores them. Gemma 2's query_pre_attn_scalar has no GGUF
key (llama.cpp infers it from the model size); it is written as
`gemma2.attention.query_pre_attn_scalar`, which llama.cpp ignores. It
deliberately shares no code with exoquic's loaders (only its safetensors
reader), so a naming or layout mistake on either side shows up as different
logits. No tokenizer is written: the vocabulary size
is in `{arch}.vocab_size`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter

from exoquic.models.hf_loader import tensor_locations
from exoquic.models.safetensors_file import SafetensorsFile

# config.json model_type -> (GGUF architecture, gguf's MODEL_ARCH, Q/K rows permuted).
FAMILIES: dict[str, tuple[str, gguf.MODEL_ARCH, bool]] = {
    "llama": ("llama", gguf.MODEL_ARCH.LLAMA, True),
    "mistral": ("llama", gguf.MODEL_ARCH.LLAMA, True),
    "qwen2": ("qwen2", gguf.MODEL_ARCH.QWEN2, False),
    "qwen3": ("qwen3", gguf.MODEL_ARCH.QWEN3, False),
    "phi3": ("phi3", gguf.MODEL_ARCH.PHI3, False),
    "gemma2": ("gemma2", gguf.MODEL_ARCH.GEMMA2, False),
}
MATRIX_TYPES = {
    "f32": GGMLQuantizationType.F32,
    "f16": GGMLQuantizationType.F16,
    "q8_0": GGMLQuantizationType.Q8_0,
}


def llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `LlamaModel.permute`: each head's two halves interleaved, row by row."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def llama3_rope_factors(head_dim: int, theta: float, scaling: dict[str, Any]) -> np.ndarray:
    """llama.cpp's `rope_freqs` for rope_type llama3 (one divisor per frequency)."""
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    context = float(scaling["original_max_position_embeddings"])
    freqs = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    factors = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < context / high:
            factors.append(1.0)
        elif wavelen > context / low:
            factors.append(factor)
        else:
            smooth = (context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def convert(model_dir: Path, out: Path, matrix_type: str = "f32") -> None:
    """Write `model_dir`'s model to `out` as GGUF, matrices as `matrix_type`."""
    config = json.loads((model_dir / "config.json").read_text())
    model_type = config.get("model_type", "llama")
    if model_type not in FAMILIES:
        raise SystemExit(f"unsupported model_type {model_type!r} (known: {', '.join(FAMILIES)})")
    arch, model_arch, permuted = FAMILIES[model_type]
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads", heads))
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    writer = GGUFWriter(str(out), arch)
    _write_metadata(writer, config, head_dim)
    names = gguf.get_tensor_name_map(model_arch, int(config["num_hidden_layers"]))
    files: dict[str, SafetensorsFile] = {}
    tied = bool(config.get("tie_word_embeddings", False))
    for hf_name, filename in sorted(tensor_locations(model_dir).items()):
        if hf_name == "lm_head.weight" and tied:
            continue
        if filename not in files:
            files[filename] = SafetensorsFile.open(model_dir / filename)
        data = files[filename].read_float32(hf_name)
        if permuted and ".q_proj." in hf_name:
            data = llama_permute(data, heads)
        elif permuted and ".k_proj." in hf_name:
            data = llama_permute(data, kv_heads)
        elif model_type == "gemma2" and hf_name.endswith("norm.weight"):
            data = data + 1  # llama.cpp's Gemma converters store the (1 + w) RMSNorm multiplies by
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise SystemExit(f"no GGUF name for tensor {hf_name}")
        _add(writer, name, data, matrix_type)
    scaling = config.get("rope_scaling") or {}
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type == "llama3":
        theta = float(config.get("rope_theta", 10000.0))
        writer.add_tensor("rope_freqs.weight", llama3_rope_factors(head_dim, theta, scaling))
    elif rope_type in ("longrope", "su"):
        _write_longrope(writer, config, scaling)
    if model_type == "gemma2":
        _write_gemma2_metadata(writer, config)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_metadata(w: GGUFWriter, config: dict[str, Any], head_dim: int) -> None:
    heads = int(config["num_attention_heads"])
    w.add_block_count(int(config["num_hidden_layers"]))
    w.add_context_length(int(config.get("max_position_embeddings", 2048)))
    w.add_embedding_length(int(config["hidden_size"]))
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_head_count(heads)
    w.add_head_count_kv(int(config.get("num_key_value_heads", heads)))
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(config.get("rope_theta", 10000.0)))
    w.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    w.add_vocab_size(int(config["vocab_size"]))
    scaling = config.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(scaling["factor"]))


def _write_longrope(w: GGUFWriter, config: dict[str, Any], scaling: dict[str, Any]) -> None:
    """Phi-3's longrope as llama.cpp's `Phi3MiniModel` writes it."""
    context = int(config["max_position_embeddings"])
    original = int(config.get("original_max_position_embeddings", context))
    stretch = context / original
    attn_factor = math.sqrt(1 + math.log(stretch) / math.log(original)) if stretch > 1 else 1.0
    w.add_rope_scaling_orig_ctx_len(original)
    w.add_rope_scaling_attn_factors(float(scaling.get("attention_factor") or attn_factor))
    for kind in ("long", "short"):
        w.add_tensor(f"rope_factors_{kind}.weight", np.array(scaling[f"{kind}_factor"], np.float32))


def _write_gemma2_metadata(w: GGUFWriter, config: dict[str, Any]) -> None:
    w.add_attn_logit_softcapping(float(config["attn_logit_softcapping"]))
    w.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    w.add_sliding_window(int(config["sliding_window"]))
    w.add_float32("gemma2.attention.query_pre_attn_scalar", float(config["query_pre_attn_scalar"]))


def _add(w: GGUFWriter, name: str, data: np.ndarray, matrix_type: str) -> None:
    """Vectors as float32 (as llama.cpp keeps norms and biases); matrices as asked."""
    qtype = MATRIX_TYPES[matrix_type] if data.ndim == 2 else GGMLQuantizationType.F32
    if qtype == GGMLQuantizationType.F32:
        w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    elif qtype == GGMLQuantizationType.F16:
        w.add_tensor(name, np.ascontiguousarray(data, dtype=np.float16))
    else:
        blocks = gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)
        w.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=qtype)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path, help="folder with config.json and safetensors")
    parser.add_argument("out", type=Path, help="GGUF file to write")
    parser.add_argument("--type", choices=sorted(MATRIX_TYPES), default="f32", dest="matrix_type")
    args = parser.parse_args(argv)
    convert(args.model_dir, args.out, args.matrix_type)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
