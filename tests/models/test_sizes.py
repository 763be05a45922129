"""The sizes plans are made with: a GGUF's own tensor bytes, safetensors at what they load as."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from exoquic.models.gguf_file import GGUFFile
from exoquic.models.gguf_loader import read_gguf_config
from exoquic.models.sizes import (
    BYTES_PER_WEIGHT,
    estimated_part_sizes,
    gguf_part_sizes,
    hf_bytes_per_weight,
)
from exoquic.models.source import resolve_source


def test_a_gguf_is_sized_by_its_own_tensors(smollm2_gguf_path: Path, tmp_path: Path) -> None:
    # Under another name, so the registry's figures cannot stand in for the file's.
    path = tmp_path / "my-model.gguf"
    shutil.copy(smollm2_gguf_path, path)
    config = read_gguf_config(path)
    sizes = resolve_source(str(path)).part_sizes(config)
    tensor_bytes = sum(t.nbytes for t in GGUFFile.open(path).tensors.values())
    # Tied: the head is the embedding (held by the last shard too) plus the output norm.
    norm = sizes.head_bytes - sizes.embed_bytes
    assert 0 < norm < sizes.embed_bytes / 100
    total = sizes.bytes_per_layer * config.num_layers + sizes.embed_bytes + norm
    # Every tensor once (the mean layer rounds up by under a byte a layer).
    assert 0 <= total - tensor_bytes < config.num_layers


def test_a_gguf_without_its_layers_is_not_sized_from_the_file(smollm2_gguf_path: Path) -> None:
    gf = GGUFFile.open(smollm2_gguf_path)
    config = read_gguf_config(smollm2_gguf_path)
    without = {n: t for n, t in gf.tensors.items() if not n.startswith("blk.3.")}
    assert gguf_part_sizes(replace(gf, tensors=without), config.num_layers) is None
    assert gguf_part_sizes(gf, config.num_layers) is not None


@pytest.mark.parametrize(
    ("weights", "expected"),
    [("auto", 34 / 32), ("q8_0", 34 / 32), ("q4_k", 144 / 256), ("keep", 2.0), ("f32", 4.0)],
)
def test_safetensors_cost_what_they_load_as(weights: str, expected: float) -> None:
    assert hf_bytes_per_weight({"torch_dtype": "bfloat16"}, weights) == expected


def test_float32_checkpoints_stay_float32_under_auto_and_keep() -> None:
    for weights in ("auto", "keep"):
        assert hf_bytes_per_weight({"torch_dtype": "float32"}, weights) == 4.0


def test_mlx_community_costs_its_bits_plus_scales() -> None:
    config = {"quantization": {"group_size": 64, "bits": 4}}
    assert hf_bytes_per_weight(config, "q8_0") == 0.5 + 8 / 64


def test_a_hub_directory_is_sized_by_the_weights_choice(tmp_path: Path) -> None:
    config_json = {
        "model_type": "llama", "vocab_size": 1000, "hidden_size": 256,
        "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4,
        "torch_dtype": "bfloat16",
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config_json))
    q8 = resolve_source(tmp_path)
    q4 = resolve_source(tmp_path, "q4_k")
    config = q8.load_config()
    assert q8.part_sizes(config) == estimated_part_sizes(config, BYTES_PER_WEIGHT["q8_0"])
    assert q4.part_sizes(config).bytes_per_layer < q8.part_sizes(config).bytes_per_layer
