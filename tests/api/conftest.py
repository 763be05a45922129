"""Fixtures for the API tests: a real `exoquic up` node, and a tiny in-process one."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from api_helpers import (
    PULLABLE,
    PULLABLE_BYTES,
    TEST_KEY,
    TINY_CONFIG,
    RunningNode,
    cache_small_gguf,
    check_generates,
    engine_under_test,
    open_tiny_node,
    start_node,
    stop_node,
    tiny_weights,
)
from fixtures.hub_server import HubServer, run_hub_server
from quart_trio import QuartTrio

from exoquic.api.app import create_app
from exoquic.api.security import ApiSecurity
from exoquic.engines.mlx.engine import MLXEngine
from exoquic.models.registry import bundled_gguf_path
from exoquic.models.tokenizer import Tokenizer
from exoquic.orchestration.node import Node


@pytest.fixture(scope="session")
def session_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """A local hub (the download tests' server) serving `PULLABLE`'s GGUF repository."""
    repo = tmp_path_factory.mktemp("pullable-repo")
    (repo / str(PULLABLE.gguf_file)).write_bytes(os.urandom(PULLABLE_BYTES))
    with run_hub_server() as server:
        server.add_repo(str(PULLABLE.gguf_repo), repo)
        yield server


@pytest.fixture(scope="session")
def api_node(
    tmp_path_factory: pytest.TempPathFactory, session_hub: HubServer
) -> Iterator[RunningNode]:
    """One real node for the whole session: `exoquic up --engine $EXOQUIC_TEST_ENGINE`,
    downloading from the local hub."""
    home = tmp_path_factory.mktemp("exoquic-home")
    hub_env = {"HF_ENDPOINT": session_hub.endpoint, "HF_HUB_OFFLINE": "0"}
    node = start_node(home, "--engine", engine_under_test(), api_key=TEST_KEY, env=hub_env)
    try:
        check_generates(node)
    except BaseException:
        stop_node(node)
        raise
    yield node
    stop_node(node)
    assert node.process.returncode == 0, f"unclean shutdown:\n{node.log()}"


@pytest.fixture(scope="session")
def gguf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache holding `api_helpers.CACHED_GGUF_ID` (a 6-layer llama, ~21 MB)."""
    cache_dir = tmp_path_factory.mktemp("hub-cache")
    cache_small_gguf(cache_dir, tmp_path_factory.mktemp("gguf"))
    return cache_dir


@pytest.fixture(scope="session")
def smollm2_tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(bundled_gguf_path())


@pytest.fixture(scope="session")
def tiny_engine() -> MLXEngine:
    """The MLX engine loaded with a random 2-layer model (requests release their caches)."""
    engine = MLXEngine(max_context=TINY_CONFIG.max_context)
    engine.load(tiny_weights(TINY_CONFIG))
    return engine


@pytest.fixture
async def tiny_node(tiny_engine: MLXEngine, smollm2_tokenizer: Tokenizer) -> AsyncIterator[Node]:
    """A node on the real tokenizer and a random 2-layer model: fast, nonsense replies."""
    async with open_tiny_node(tiny_engine, smollm2_tokenizer) as node:
        yield node


@pytest.fixture
def tiny_app_factory(tiny_node: Node) -> Callable[..., QuartTrio]:
    """`make(security=None)` -> the real app around the tiny node."""

    def make(security: ApiSecurity | None = None) -> QuartTrio:
        return create_app(tiny_node, security)

    return make
