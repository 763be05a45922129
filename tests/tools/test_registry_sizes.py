"""The registry's Q4_K_M sizes against the files tools/gen_gguf.py writes by llama.cpp's rules."""

from __future__ import annotations

import pytest
from gen_gguf import SHAPES, tensor_shapes, tensor_type
from gguf import GGMLQuantizationType
from gguf.quants import GGML_QUANT_SIZES

from exoquic.models.gguf_sizes import BLOCK_SIZES
from exoquic.models.registry import get_model

MODELS = {
    "llama-3.2-1b": "llama-3.2-1b-instruct",
    "llama-3.2-3b": "llama-3.2-3b-instruct",
    "llama-3.1-8b": "llama-3.1-8b-instruct",
    "qwen2.5-7b": "qwen2.5-7b-instruct",
}


def _bytes(name: str, dims: tuple[int, ...], layers: int, tied: bool) -> int:
    if len(dims) == 1:
        return 4 * dims[0]  # float32 vector
    block_values, block_bytes = GGML_QUANT_SIZES[tensor_type("q4_k_m", name, dims[1], layers, tied)]
    return dims[0] * dims[1] // block_values * block_bytes


@pytest.mark.parametrize("shape_name", MODELS)
def test_registry_sizes_equal_gen_gguf_files(shape_name: str) -> None:
    shape, entry = SHAPES[shape_name], get_model(MODELS[shape_name])
    sizes = {
        name: _bytes(name, dims, shape.layers, shape.tied) for name, dims in tensor_shapes(shape)
    }
    layers = [
        sum(b for name, b in sizes.items() if name.startswith(f"blk.{i}."))
        for i in range(shape.layers)
    ]
    assert list(entry.layer_bytes) == layers
    assert entry.bytes_per_layer == max(layers)
    assert entry.embed_bytes == sizes["token_embd.weight"]
    if not shape.tied:
        assert entry.head_bytes == sizes["output.weight"] + sizes["output_norm.weight"]


def test_block_sizes_are_the_formats() -> None:
    """gguf_sizes keeps its own table (the command line must not import numpy)."""
    for kind, size in BLOCK_SIZES.items():
        assert GGML_QUANT_SIZES[GGMLQuantizationType[kind.upper()]] == size
