"""`POST /api/show` over a real socket: a loaded model as its node has it, a
cached one from its files without loading it, an unknown one a 404."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
from fixtures.hub_gguf import GGUF_FILE, GGUF_LAYERS, GGUF_REPO, write_gguf_repo
from hypercorn.config import Config
from hypercorn.trio import serve

from exoquic.api.app import create_app
from exoquic.download.cache import RepoCache
from exoquic.orchestration.catalog import Catalog
from exoquic.orchestration.modelset import ModelSet
from exoquic.orchestration.node import Node

CACHED_ID = f"{GGUF_REPO}/{GGUF_FILE}"
COMMIT = "5" * 40


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache holding one small llama GGUF, as `exoquic pull` leaves it."""
    cache_dir = tmp_path_factory.mktemp("hub-cache")
    written = write_gguf_repo(tmp_path_factory.mktemp("gguf")) / GGUF_FILE
    repo = RepoCache(cache_dir, GGUF_REPO)
    blob = repo.blob("e" * 64)
    blob.parent.mkdir(parents=True)
    written.rename(blob)
    repo.write_ref("main", COMMIT)
    repo.link(COMMIT, GGUF_FILE, blob)
    return cache_dir


@asynccontextmanager
async def served(node: Node, cache_dir: Path) -> AsyncIterator[tuple[httpx.AsyncClient, ModelSet]]:
    """The app with on-demand loading from `cache_dir`, on a free loopback port."""
    models = ModelSet(node, Catalog(cache_dir), usable_memory=8 << 30)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    async with trio.open_nursery() as nursery:
        await nursery.start(models.run)
        run_server = partial(
            serve, create_app(node, models=models), config, shutdown_trigger=trio.sleep_forever
        )
        [url] = await nursery.start(run_server)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            yield client, models
        nursery.cancel_scope.cancel()


async def loaded(client: httpx.AsyncClient) -> list[str]:
    response = await client.get("/api/ps")
    response.raise_for_status()
    return [m["model"] for m in response.json()["models"]]


async def test_show_describes_a_cached_model_without_loading_it(
    tiny_node: Node, hub_cache: Path
) -> None:
    async with served(tiny_node, hub_cache) as (client, models):
        before = await loaded(client)
        response = await client.post("/api/show", json={"model": f"{GGUF_REPO}:Q4_K_M"})
        assert response.status_code == 200, response.text
        shown = response.json()
        info = shown["model_info"]
        assert info["general.architecture"] == "llama"
        assert info["llama.block_count"] == GGUF_LAYERS
        assert info["llama.embedding_length"] == 256
        assert info["llama.context_length"] == 2048  # the file's, under the node's limit
        assert shown["details"]["format"] == "gguf" and shown["details"]["family"] == "llama"
        assert "<|im_start|>" in shown["template"]  # SmolLM2's tokenizer, from the header
        assert CACHED_ID in shown["modelfile"]
        assert await loaded(client) == before  # nothing was loaded to show it
        assert CACHED_ID not in models.residency


async def test_show_of_a_loaded_model_and_of_an_unknown_one(
    tiny_node: Node, hub_cache: Path
) -> None:
    async with served(tiny_node, hub_cache) as (client, _):
        response = await client.post("/api/show", json={"model": tiny_node.model_id})
        assert response.status_code == 200, response.text
        info = response.json()["model_info"]
        arch = tiny_node.config.architecture
        assert info[f"{arch}.block_count"] == tiny_node.config.num_layers
        assert info[f"{arch}.context_length"] == tiny_node.max_context

        missing = await client.post("/api/show", json={"model": "test-org/absent-GGUF"})
        assert missing.status_code == 404
        assert "exoquic pull" in missing.json()["error"]
