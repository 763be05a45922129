"""Fixtures for download tests: a local hub serving a tiny llama-shaped repository."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest
from fixtures.hub_gguf import GGUF_REPO, write_gguf_repo
from fixtures.hub_server import TINY_REPO, HubServer, build_tiny_repo, run_hub_server


@pytest.fixture(scope="session")
def tiny_repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_repo(tmp_path_factory.mktemp("tiny-repo"))


@pytest.fixture
def hub(tiny_repo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A local hub serving the tiny repo, with HF_ENDPOINT pointing at it."""
    with run_hub_server() as server:
        server.add_repo(TINY_REPO, tiny_repo_dir)
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        # huggingface_hub reads HF_HUB_OFFLINE once, at import.
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield server


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# -- a single-file GGUF repository ------------------------------------------------------


@pytest.fixture(scope="session")
def gguf_repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf_repo(tmp_path_factory.mktemp("gguf-repo"))


@pytest.fixture
def gguf_hub(hub: HubServer, gguf_repo_dir: Path) -> HubServer:
    """The local hub, also serving the GGUF repository."""
    hub.add_repo(GGUF_REPO, gguf_repo_dir)
    return hub
