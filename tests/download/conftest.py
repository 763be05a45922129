"""Fixtures for download tests: a local hub serving a tiny llama-shaped repository."""

from __future__ import annotations

import sys
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


# -- a single-file GGUF repository ------------------------------------------------------

TOOLS = Path(__file__).resolve().parents[2] / "tools"
GGUF_REPO = "exoquic-test/small-llama-GGUF"
GGUF_FILE = "small-llama-Q4_K_M.gguf"
GGUF_LAYERS = 6


@pytest.fixture(scope="session")
def gguf_repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-layer llama GGUF (Q4_K_M mix, untied head, SmolLM2's tokenizer; ~21 MB)
    written by tools/gen_gguf.py, as the only weights of a repository."""
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))
    from gen_gguf import ModelShape, generate

    shape = ModelShape("llama", GGUF_LAYERS, 256, 1024, 4, 2, 49152, 10000.0, 1e-5, 2048, False)
    out = tmp_path_factory.mktemp("gguf-repo")
    generate(shape, "q4_k_m", out / GGUF_FILE)
    (out / "README.md").write_text("# small test GGUF\n")
    return out


@pytest.fixture
def gguf_hub(hub: HubServer, gguf_repo_dir: Path) -> HubServer:
    """The local hub, also serving the GGUF repository."""
    hub.add_repo(GGUF_REPO, gguf_repo_dir)
    return hub
