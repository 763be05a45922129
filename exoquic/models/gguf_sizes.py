"""Bytes of a model's tensors in a llama.cpp Q4_K_M GGUF, from its config's numbers.

Plans are made before anything downloads, so the registry needs each layer's
size without the file. llama.cpp's quantizer (`llama_tensor_get_type` in
`src/llama-quant.cpp`) decides each tensor's type from its name, its row
length and its layer:

- Q4_K by default; Q6_K for the output head (the embedding when tied);
- Q6_K for `attn_v` and `ffn_down` in the layers `use_more_bits` picks (the
  first and last eighth, and every third layer between);
- Q5_K for a fused `attn_qkv` (Phi-3);
- a K-quant on rows that are not a multiple of 256 values falls back:
  Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0 (Qwen2.5-0.5B's 896, SmolLM2's 960);
- vectors (norms, biases) stay float32.

tools/gen_gguf.py writes files by the same rules; a test checks the two agree.
The registry computes its sizes when it is imported, and the command line
imports the registry to build its parser, so this module imports neither
numpy nor the `gguf` package: the block sizes below are the format's
constants (a test checks them against `gguf.GGML_QUANT_SIZES`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

Kind = Literal["f32", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k"]
# GGML block kinds: (values per block, bytes per block).
BLOCK_SIZES: dict[Kind, tuple[int, int]] = {
    "q5_0": (32, 22),
    "q5_1": (32, 24),
    "q8_0": (32, 34),
    "q4_k": (256, 144),
    "q5_k": (256, 176),
    "q6_k": (256, 210),
}
_K_FALLBACK: dict[Kind, Kind] = {"q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


@dataclass(frozen=True)
class ModelDims:
    """The numbers of a model's config.json that decide its tensors."""

    arch: str  # llama, qwen2, qwen3, phi3, gemma2
    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @property
    def q_rows(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_rows(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def params_per_layer(self) -> int:
        return sum(rows * max(cols, 1) for _, rows, cols in layer_tensors(self))

    @property
    def embed_params(self) -> int:
        return self.vocab * self.hidden


def layer_tensors(dims: ModelDims) -> Iterator[tuple[str, int, int]]:
    """(GGUF name suffix, rows, row length) of one layer's tensors; row length 0: a vector."""
    d, f = dims.hidden, dims.ffn
    yield "attn_norm.weight", d, 0
    if dims.arch == "phi3":  # fused q/k/v and gate/up
        yield "attn_qkv.weight", dims.q_rows + 2 * dims.kv_rows, d
    else:
        yield "attn_q.weight", dims.q_rows, d
        yield "attn_k.weight", dims.kv_rows, d
        yield "attn_v.weight", dims.kv_rows, d
    if dims.arch == "qwen2":
        yield from (("attn_q.bias", dims.q_rows, 0), ("attn_k.bias", dims.kv_rows, 0))
        yield "attn_v.bias", dims.kv_rows, 0
    if dims.arch == "qwen3":  # per-head RMSNorm of q and k
        yield from (
            ("attn_q_norm.weight", dims.head_dim, 0),
            ("attn_k_norm.weight", dims.head_dim, 0),
        )
    yield "attn_output.weight", d, dims.q_rows
    if dims.arch == "gemma2":  # norms after attention and after the MLP too
        yield from (("post_attention_norm.weight", d, 0), ("post_ffw_norm.weight", d, 0))
    yield "ffn_norm.weight", d, 0
    if dims.arch == "phi3":
        yield "ffn_up.weight", 2 * f, d
    else:
        yield from (("ffn_gate.weight", f, d), ("ffn_up.weight", f, d))
    yield "ffn_down.weight", d, f


def use_more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's choice of the layers whose attn_v / ffn_down get Q6_K in *_K_M mixes."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def q4_k_m_type(suffix: str, row_length: int, layer: int, layers: int) -> Kind:
    """The kind llama.cpp's Q4_K_M gives a layer tensor (suffix as in `layer_tensors`)."""
    if row_length == 0:
        return "f32"
    chosen: Kind = "q4_k"
    if suffix in ("attn_v.weight", "ffn_down.weight") and use_more_bits(layer, layers):
        chosen = "q6_k"
    elif suffix == "attn_qkv.weight":
        chosen = "q5_k"
    return _with_fallback(chosen, row_length)


def tensor_bytes(kind: Kind, rows: int, row_length: int) -> int:
    """Bytes of a (rows, row_length) tensor of `kind`; row_length 0: a float32 vector."""
    if row_length == 0 or kind == "f32":
        return 4 * rows * max(row_length, 1)
    block_values, block_bytes = BLOCK_SIZES[kind]
    return rows * row_length // block_values * block_bytes


def q4_k_m_layer_bytes(dims: ModelDims) -> tuple[int, ...]:
    """Each layer's bytes in the model's Q4_K_M GGUF (they differ: see `use_more_bits`)."""
    return tuple(
        sum(
            tensor_bytes(q4_k_m_type(name, cols, i, dims.layers), rows, cols)
            for name, rows, cols in layer_tensors(dims)
        )
        for i in range(dims.layers)
    )


def q4_k_m_embed_bytes(dims: ModelDims) -> int:
    """The token embedding: Q4_K, or the head's Q6_K when it doubles as the head."""
    kind = _with_fallback("q6_k" if dims.tied else "q4_k", dims.hidden)
    return tensor_bytes(kind, dims.vocab, dims.hidden)


def q4_k_m_head_bytes(dims: ModelDims) -> int:
    """The output head (Q6_K) plus the final norm; a tied head is the embedding again."""
    if dims.tied:
        head = q4_k_m_embed_bytes(dims)
    else:
        head = tensor_bytes(_with_fallback("q6_k", dims.hidden), dims.vocab, dims.hidden)
    return head + 4 * dims.hidden


def _with_fallback(kind: Kind, row_length: int) -> Kind:
    block_values, _ = BLOCK_SIZES[kind]
    return _K_FALLBACK.get(kind, kind) if row_length % block_values else kind
