"""Which repository files a shard needs (pure selection logic)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exoquic.download.selection import (
    aux_files_present,
    layer_count_of,
    tensor_needed,
    weight_files_for_shard,
)
from exoquic.models.shard import Shard

NUM_LAYERS = 8


def shard(start: int, end: int) -> Shard:
    return Shard("m", start, end, NUM_LAYERS)


def mlx_style_map(head: bool) -> dict[str, str]:
    """Two layers per file; quantized weights come with scales and biases."""
    m = {}
    for i in range(NUM_LAYERS):
        for part in ("weight", "scales", "biases"):
            m[f"model.layers.{i}.mlp.up_proj.{part}"] = f"w{i // 2}.safetensors"
    m["model.embed_tokens.weight"] = "w0.safetensors"
    m["model.embed_tokens.scales"] = "w0.safetensors"
    m["model.norm.weight"] = "w3.safetensors"
    if head:
        m["lm_head.weight"] = "head.safetensors"
    return m


@pytest.mark.parametrize(
    ("start", "end", "tied", "head", "expected"),
    [
        (0, 1, False, True, ["w0.safetensors"]),
        (2, 5, False, True, ["w1.safetensors", "w2.safetensors"]),
        (6, 7, False, True, ["head.safetensors", "w3.safetensors"]),
        (6, 7, True, True, ["w0.safetensors", "w3.safetensors"]),  # tied: the head is the embedding
        (6, 7, False, False, ["w0.safetensors", "w3.safetensors"]),  # no head stored at all
        (3, 3, True, False, ["w1.safetensors"]),
    ],
)
def test_weight_files_for_shard(
    start: int, end: int, tied: bool, head: bool, expected: list[str]
) -> None:
    files = weight_files_for_shard(mlx_style_map(head), shard(start, end), tie_word_embeddings=tied)
    assert files == expected


def test_layer_numbers_are_matched_exactly_not_by_prefix() -> None:
    # Layer 1 must not pull in layers 10..19.
    big = Shard("m", 1, 1, 20)
    assert tensor_needed("model.layers.1.mlp.up_proj.weight", big, head_is_embedding=False)
    assert not tensor_needed("model.layers.12.mlp.up_proj.weight", big, head_is_embedding=False)


@given(st.lists(st.integers(1, NUM_LAYERS - 1), unique=True, max_size=NUM_LAYERS - 1))
def test_a_partition_needs_every_tensor_and_each_layer_once(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), NUM_LAYERS]
    shards = [shard(a, b - 1) for a, b in itertools.pairwise(bounds)]
    for name in mlx_style_map(head=True):
        holders = [s for s in shards if tensor_needed(name, s, head_is_embedding=False)]
        assert holders, name
        if name.startswith("model.layers."):
            assert len(holders) == 1, name


def test_aux_files_present_keeps_only_what_the_repo_has() -> None:
    listing = ["README.md", "tokenizer.json", "config.json", "model.safetensors"]
    assert aux_files_present(listing) == ["config.json", "tokenizer.json"]


@pytest.mark.parametrize("config", [{}, {"num_hidden_layers": 0}, {"num_hidden_layers": "30"}])
def test_layer_count_of_rejects_bad_configs(config: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="num_hidden_layers"):
        layer_count_of(config)
    assert layer_count_of({"num_hidden_layers": 30}) == 30


def test_every_public_name_resolves() -> None:
    import exoquic.download

    for name in exoquic.download.__all__:
        assert getattr(exoquic.download, name) is not None
