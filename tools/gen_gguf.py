"""Write GGUF files of real models' shapes, with random but valid quantized blocks.

    uv run python tools/gen_gguf.py llama-3.2-1b q4_k_m OUT.gguf [--seed 0]
    uv run python tools/gen_gguf.py --list

The files have the tensor names, shapes, types and metadata of a real
download, so llama.cpp and exoquic load them and their speed and memory can
be measured honestly without the hub. The weights are noise: the text they
produce is not. The tokenizer (vocabulary, merges, chat template) is copied
from the bundled SmolLM2 GGUF and padded with control tokens up to the
model's vocabulary size, because llama.cpp requires the embedding's row count
to equal the vocabulary's length.

Mixes follow llama.cpp's quantizer (`llama_tensor_get_type` in
`src/llama-quant.cpp`):

- `q4_k_m` / `q5_k_m`: Q4_K / Q5_K everywhere, except Q6_K for the output
  head (the embedding when it is tied) and for `attn_v` and `ffn_down` in the
  layers `use_more_bits` picks (the first and last eighth, and every third
  layer between);
- `q6_k`: Q6_K everywhere; `q8_0`: Q8_0 everywhere;
- `iq4_xs` / `iq4_nl`: IQ4_XS / IQ4_NL everywhere (the untied embedding
  too), except Q6_K for the output head, Q5_K for `attn_v` where 4 or more
  query heads share a kv head, and Q5_K for `ffn_down` in the first eighth of
  the layers (llama-quantize without an importance matrix; with one, as in
  bartowski's files, `ffn_down` stays IQ4);
- a K-quant on a row that is not a multiple of 256 values falls back as
  llama.cpp does: Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, IQ4_XS -> IQ4_NL;
- norms, biases and `rope_freqs` stay float32.

Blocks are random bytes whose float16 scale fields are overwritten with
finite values sized so that each weight stays near `1 / sqrt(row length)`:
every block decodes to finite numbers, and activations neither vanish nor
overflow through the layers.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFValueType, GGUFWriter, LlamaFileType
from gguf.quants import GGML_QUANT_SIZES


@dataclass(frozen=True)
class Llama3Rope:
    """Llama 3.1 / 3.2 RoPE scaling, as in their `config.json`."""

    factor: float
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192


@dataclass(frozen=True)
class ModelShape:
    """What decides a model's tensors: the numbers of its `config.json`."""

    arch: str  # GGUF `general.architecture`
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int
    rope_theta: float
    rms_eps: float
    context: int
    tied: bool  # output head shares the embedding (no `output.weight`)
    qkv_bias: bool = False  # Qwen2 has biases on q/k/v
    rope: Llama3Rope | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SHAPES: dict[str, ModelShape] = {
    "llama-3.2-1b": ModelShape(
        "llama",
        16,
        2048,
        8192,
        32,
        8,
        128256,
        500000.0,
        1e-5,
        131072,
        True,
        rope=Llama3Rope(32.0),
    ),
    "llama-3.2-3b": ModelShape(
        "llama",
        28,
        3072,
        8192,
        24,
        8,
        128256,
        500000.0,
        1e-5,
        131072,
        True,
        rope=Llama3Rope(32.0),
    ),
    "llama-3.1-8b": ModelShape(
        "llama",
        32,
        4096,
        14336,
        32,
        8,
        128256,
        500000.0,
        1e-5,
        131072,
        False,
        rope=Llama3Rope(8.0),
    ),
    "qwen2.5-7b": ModelShape(
        "qwen2", 28, 3584, 18944, 28, 4, 152064, 1000000.0, 1e-6, 32768, False, qkv_bias=True
    ),
    # Small enough for tests; rows of 256 so K-quants apply without fallbacks.
    "tiny": ModelShape("llama", 4, 256, 512, 4, 2, 49152, 10000.0, 1e-5, 2048, True),
}

MIXES: dict[str, tuple[T, LlamaFileType]] = {
    "q4_k_m": (T.Q4_K, LlamaFileType.MOSTLY_Q4_K_M),
    "q5_k_m": (T.Q5_K, LlamaFileType.MOSTLY_Q5_K_M),
    "q6_k": (T.Q6_K, LlamaFileType.MOSTLY_Q6_K),
    "q8_0": (T.Q8_0, LlamaFileType.MOSTLY_Q8_0),
    "iq4_xs": (T.IQ4_XS, LlamaFileType.MOSTLY_IQ4_XS),
    "iq4_nl": (T.IQ4_NL, LlamaFileType.MOSTLY_IQ4_NL),
}

K_FALLBACK = {T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0, T.IQ4_XS: T.IQ4_NL}

# The float16 fields of each block: (byte offset, value as a multiple of the
# weight amplitude A). Chosen so that the largest weight a block can encode is
# about 2A (codes and sub-block scales are random bytes).
SCALE_FIELDS: dict[T, tuple[tuple[int, float], ...]] = {
    T.Q8_0: ((0, 1 / 128),),  # d * q, q in -128..127
    T.Q4_0: ((0, 1 / 8),),  # d * (q - 8)
    T.Q4_1: ((0, 2 / 16), (2, -1.0)),  # d * q + m
    T.Q5_0: ((0, 1 / 16),),  # d * (q - 16)
    T.Q5_1: ((0, 2 / 32), (2, -1.0)),  # d * q + m
    T.Q4_K: ((0, 2 / (63 * 15)), (2, 1 / 63)),  # d * sc * q - dmin * m, sc and m 6-bit
    T.Q5_K: ((0, 2 / (63 * 31)), (2, 1 / 63)),
    T.Q6_K: ((208, 1 / (128 * 32)),),  # d * sc * (q - 32), sc int8; d is the last field
    T.IQ4_NL: ((0, 2 / 127),),  # d * K[q], K in -127..113
    T.IQ4_XS: ((0, 2 / (32 * 127)),),  # d * (ls - 32) * K[q], ls 6-bit
}


def use_more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's choice of the layers whose attn_v / ffn_down get Q6_K in *_K_M mixes."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def tensor_type(mix: str, name: str, cols: int, layers: int, tied: bool, gqa: int = 1) -> T:
    """The GGML type llama.cpp's quantizer gives tensor `name` (of rows of `cols`) in `mix`,
    for a model whose `gqa` query heads share each kv head."""
    base, _ = MIXES[mix]
    chosen = base
    is_head = name == "output.weight" or (tied and name == "token_embd.weight")
    if is_head and base != T.Q8_0:
        chosen = T.Q6_K
    elif name.startswith("blk."):
        chosen = _layer_type(mix, name, layers, gqa) or base
    block_values, _ = GGML_QUANT_SIZES[chosen]
    if cols % block_values:
        chosen = K_FALLBACK.get(chosen, chosen)
    return chosen


def _layer_type(mix: str, name: str, layers: int, gqa: int) -> T | None:
    """A layer tensor's type where the mix gives it more bits than its base type."""
    layer, suffix = int(name.split(".")[1]), name.split(".", 2)[2]
    if mix in ("q4_k_m", "q5_k_m"):
        if suffix in ("attn_v.weight", "ffn_down.weight") and use_more_bits(layer, layers):
            return T.Q6_K
    elif mix in ("iq4_xs", "iq4_nl"):
        if suffix == "attn_v.weight" and gqa >= 4:
            return T.Q5_K
        if suffix == "ffn_down.weight" and layer < layers // 8:
            return T.Q5_K
    return None


def tensor_shapes(shape: ModelShape) -> Iterator[tuple[str, tuple[int, ...]]]:
    """Every tensor of the model in llama.cpp's file order, with its numpy shape (rows, cols)."""
    d, hd, kv = shape.hidden, shape.head_dim, shape.kv_heads * shape.head_dim
    yield "token_embd.weight", (shape.vocab, d)
    if shape.rope is not None:
        yield "rope_freqs.weight", (hd // 2,)
    for i in range(shape.layers):
        b = f"blk.{i}."
        yield b + "attn_norm.weight", (d,)
        yield b + "attn_q.weight", (shape.heads * hd, d)
        yield b + "attn_k.weight", (kv, d)
        yield b + "attn_v.weight", (kv, d)
        if shape.qkv_bias:
            yield b + "attn_q.bias", (shape.heads * hd,)
            yield b + "attn_k.bias", (kv,)
            yield b + "attn_v.bias", (kv,)
        yield b + "attn_output.weight", (d, shape.heads * hd)
        yield b + "ffn_norm.weight", (d,)
        yield b + "ffn_gate.weight", (shape.ffn, d)
        yield b + "ffn_up.weight", (shape.ffn, d)
        yield b + "ffn_down.weight", (d, shape.ffn)
    yield "output_norm.weight", (d,)
    if not shape.tied:
        yield "output.weight", (shape.vocab, d)


def random_blocks(qtype: T, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """`uint8 (rows, bytes_per_row)` of random `qtype` blocks that all decode to finite weights."""
    block_values, block_bytes = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block_values
    raw = np.frombuffer(rng.bytes(n_blocks * block_bytes), np.uint8).copy()
    blocks = raw.reshape(n_blocks, block_bytes)
    amplitude = 1.0 / math.sqrt(cols)
    for offset, multiple in SCALE_FIELDS[qtype]:
        jitter = rng.uniform(0.5, 1.5, n_blocks)
        field = (amplitude * multiple * jitter).astype("<f2")
        blocks[:, offset : offset + 2] = field.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, -1)


def llama3_rope_factors(shape: ModelShape) -> np.ndarray:
    """`rope_freqs.weight`: the divisor of each rotary frequency (llama.cpp's conversion)."""
    assert shape.rope is not None
    r = shape.rope
    inv_freq = shape.rope_theta ** (-np.arange(0, shape.head_dim, 2) / shape.head_dim)
    wavelength = 2 * math.pi / inv_freq
    low_wavelength = r.original_context / r.low_freq_factor
    high_wavelength = r.original_context / r.high_freq_factor
    smooth = (r.original_context / wavelength - r.low_freq_factor) / (
        r.high_freq_factor - r.low_freq_factor
    )
    mid = 1 / ((1 - smooth) / r.factor + smooth)
    factors = np.where(
        wavelength < high_wavelength, 1.0, np.where(wavelength > low_wavelength, r.factor, mid)
    )
    return factors.astype(np.float32)


def dense_tensor(name: str, size: int, shape: ModelShape, rng: np.random.Generator) -> np.ndarray:
    """The float32 vectors: norms near 1, biases near 0, RoPE frequency factors."""
    if name == "rope_freqs.weight":
        return llama3_rope_factors(shape)
    if name.endswith(".bias"):
        return rng.normal(0.0, 0.01, size).astype(np.float32)
    return rng.uniform(0.9, 1.1, size).astype(np.float32)


def write_metadata(w: GGUFWriter, shape: ModelShape, file_type: LlamaFileType, name: str) -> None:
    w.add_name(name)
    w.add_file_type(file_type)
    w.add_quantization_version(2)
    w.add_block_count(shape.layers)
    w.add_context_length(shape.context)
    w.add_embedding_length(shape.hidden)
    w.add_feed_forward_length(shape.ffn)
    w.add_head_count(shape.heads)
    w.add_head_count_kv(shape.kv_heads)
    w.add_rope_dimension_count(shape.head_dim)
    w.add_rope_freq_base(shape.rope_theta)
    w.add_layer_norm_rms_eps(shape.rms_eps)
    w.add_vocab_size(shape.vocab)


def copy_tokenizer(w: GGUFWriter, source: Path, vocab: int) -> None:
    """Copy `tokenizer.*` from `source`, padding the vocabulary with control tokens to `vocab`.

    exoquic's `GGUFFile` reads the header in under a second where
    `gguf.GGUFReader` takes tens of seconds on the 98k tokenizer strings.
    """
    from exoquic.models.gguf_file import GGUFFile

    metadata = GGUFFile.open(source).metadata
    for key, value in metadata.items():
        if not key.startswith("tokenizer."):
            continue
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
            if len(value) > vocab:
                raise ValueError(f"{source} has more than {vocab} tokens")
            if key == "tokenizer.ggml.tokens":
                value = [*value, *(f"<|pad_{i}|>" for i in range(len(value), vocab))]
            else:
                value = [*value, *[3] * (vocab - len(value))]  # 3: control
        w.add_key_value(key, value, *_value_types(key, value))


def _value_types(key: str, value: object) -> tuple[GGUFValueType, GGUFValueType | None]:
    """The GGUF types llama.cpp expects for a tokenizer key (token ids are u32, types i32)."""
    if isinstance(value, list):
        item = GGUFValueType.INT32 if key == "tokenizer.ggml.token_type" else GGUFValueType.STRING
        return GGUFValueType.ARRAY, item
    if isinstance(value, bool):
        return GGUFValueType.BOOL, None
    if isinstance(value, int):
        return GGUFValueType.UINT32, None
    if isinstance(value, float):
        return GGUFValueType.FLOAT32, None
    return GGUFValueType.STRING, None


def bundled_tokenizer_source() -> Path:
    from exoquic.models.registry import bundled_gguf_path

    return bundled_gguf_path()


def generate(
    shape_name: str | ModelShape,
    mix: str,
    out: Path,
    seed: int = 0,
    tokenizer: Path | None = None,
) -> None:
    """Write the GGUF of a shape (a `SHAPES` name or a `ModelShape`) quantized as `mix` to `out`.

    Tensors are made and written one at a time, so memory stays small.
    """
    shape = SHAPES[shape_name] if isinstance(shape_name, str) else shape_name
    rng = np.random.default_rng(seed)
    w, plan = _write_header(shape, str(shape_name), mix, out, tokenizer)
    # Tensors are made and written one by one: an 8B model never sits in memory.
    for name, dims, qtype in plan:
        if qtype is None:
            w.write_tensor_data(dense_tensor(name, dims[0], shape, rng))
        else:
            w.write_tensor_data(random_blocks(qtype, dims[0], dims[1], rng))
    w.close()


def generate_header(
    shape_name: str | ModelShape, mix: str, out: Path, tokenizer: Path | None = None
) -> None:
    """Write only the header (metadata and tensor table) of what `generate` writes:
    enough to compute byte ranges of an 8B file without writing its 4.9 GB."""
    shape = SHAPES[shape_name] if isinstance(shape_name, str) else shape_name
    w, _ = _write_header(shape, str(shape_name), mix, out, tokenizer)
    w.close()


def _write_header(
    shape: ModelShape, label: str, mix: str, out: Path, tokenizer: Path | None
) -> tuple[GGUFWriter, list[tuple[str, tuple[int, ...], T | None]]]:
    _, file_type = MIXES[mix]
    w = GGUFWriter(out, shape.arch)
    write_metadata(w, shape, file_type, f"random {label} {mix}")
    copy_tokenizer(w, tokenizer or bundled_tokenizer_source(), shape.vocab)
    plan = [
        (name, dims, _planned_type(shape, mix, name, dims)) for name, dims in tensor_shapes(shape)
    ]
    for name, dims, qtype in plan:
        if qtype is None:
            w.add_tensor_info(name, dims, np.dtype(np.float32), 4 * dims[0])
        else:
            block_values, block_bytes = GGML_QUANT_SIZES[qtype]
            byte_shape = (dims[0], dims[1] // block_values * block_bytes)
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    return w, plan


def _planned_type(shape: ModelShape, mix: str, name: str, dims: tuple[int, ...]) -> T | None:
    """The quantized type of a matrix, None for the float32 vectors."""
    if len(dims) == 1:
        return None
    gqa = shape.heads // shape.kv_heads
    return tensor_type(mix, name, dims[1], shape.layers, shape.tied, gqa)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("shape", nargs="?", choices=sorted(SHAPES))
    parser.add_argument("mix", nargs="?", choices=sorted(MIXES))
    parser.add_argument("out", nargs="?", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", type=Path, help="GGUF to copy the tokenizer from")
    parser.add_argument("--list", action="store_true", help="list the shapes and mixes")
    args = parser.parse_args(argv)
    if args.list:
        for name, s in SHAPES.items():
            print(
                f"{name:>13}: {s.arch}, {s.layers} layers, hidden {s.hidden}, ffn {s.ffn}, "
                f"heads {s.heads}/{s.kv_heads}, vocab {s.vocab}, tied={s.tied}"
            )
        print("mixes:", ", ".join(MIXES))
        return
    if args.out is None:
        parser.error("give SHAPE MIX OUT (or --list)")
    generate(args.shape, args.mix, args.out, args.seed, args.tokenizer)
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**30:.2f} GiB)", file=sys.stderr)


if __name__ == "__main__":
    main()
