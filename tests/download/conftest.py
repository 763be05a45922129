"""Fixtures for download tests: a local hub serving a tiny llama-shaped repository."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest
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
