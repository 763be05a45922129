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
