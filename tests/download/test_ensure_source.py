"""A node's model resolves locally when bundled, and is fetched from the hub otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.hub_server import TINY_REPO, HubServer

from exoquic.download.ensure import hub_repo_for, prepare_model
from exoquic.download.progress import DownloadProgress
from exoquic.models.registry import DEFAULT_MODEL_ID
from exoquic.models.shard import Shard


def test_bundled_and_local_models_need_no_download(tmp_path: Path) -> None:
    assert hub_repo_for(DEFAULT_MODEL_ID) is None
    assert hub_repo_for(str(tmp_path)) is None
    assert hub_repo_for("smollm2-360m-instruct") == "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert hub_repo_for("someone/some-model") == "someone/some-model"


async def test_bundled_model_resolves_without_network() -> None:
    model = await prepare_model(DEFAULT_MODEL_ID)
    assert model.source.kind == "gguf"


async def test_hub_model_fetches_small_files_first_and_its_shard_on_load(
    hub: HubServer, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXOQUIC_HF_CACHE", str(cache_dir))
    progress = DownloadProgress(TINY_REPO)
    model = await prepare_model(TINY_REPO, progress)
    source = model.source
    assert source.kind == "hf" and source.path.is_relative_to(cache_dir)
    assert source.load_config().num_layers == 6
    assert not any(name.endswith(".safetensors") for name in hub.downloaded_files())
    shard = Shard(TINY_REPO, 0, 1, 6)
    weights = model.load_shard(shard)
    assert "model.layers.1.mlp.up_proj.weight" in weights.tensors
    assert progress.snapshot()["complete"]


@pytest.mark.parametrize(
    ("weights", "expected_kinds"),
    [
        ("auto", {"float32"}),  # this copy is stored as float32: auto keeps it
        ("q8_0", {"q8_0"}),
        # 576-value rows are not whole Q4_K super-blocks: those take Q4_1.
        ("q4_k", {"q4_k", "q4_1"}),
    ],
)
async def test_a_local_directory_loads_as_the_weights_choice_says(
    hf_model_dir: Path, weights: str, expected_kinds: set[str]
) -> None:
    model = await prepare_model(str(hf_model_dir), weights=weights)
    assert model.source.weights == weights
    config = model.source.load_config()
    loaded = model.load_shard(Shard(model.source.model_id, 0, 0, config.num_layers))
    matrices = [
        t
        for n, t in loaded.tensors.items()
        if n.startswith("model.layers.0.") and n.endswith("proj.weight")
    ]
    kinds = {getattr(t, "kind", str(getattr(t, "dtype", ""))) for t in matrices}
    assert kinds == expected_kinds


async def test_an_unknown_weights_choice_is_refused(hf_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="q8_0"):
        await prepare_model(str(hf_model_dir), weights="q3_k")
