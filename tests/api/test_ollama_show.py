"""`POST /api/show` over a real socket: a loaded model as its node has it, a
cached one from its files without loading it, an unknown one a 404."""

from __future__ import annotations

from pathlib import Path

import httpx
from api_helpers import CACHED_GGUF_ID, cache_file, serving_on_demand
from fixtures.hub_gguf import GGUF_LAYERS, GGUF_REPO

from exoquic.orchestration.node import Node


async def loaded(client: httpx.AsyncClient) -> list[str]:
    response = await client.get("/api/ps")
    response.raise_for_status()
    return [m["model"] for m in response.json()["models"]]


async def test_show_describes_a_cached_model_without_loading_it(
    tiny_node: Node, gguf_cache: Path
) -> None:
    async with serving_on_demand(tiny_node, gguf_cache) as (client, models):
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
        assert CACHED_GGUF_ID in shown["modelfile"]
        assert await loaded(client) == before  # nothing was loaded to show it
        assert CACHED_GGUF_ID not in models.residency


async def test_show_of_a_loaded_model_and_of_an_unknown_one(
    tiny_node: Node, gguf_cache: Path
) -> None:
    async with serving_on_demand(tiny_node, gguf_cache) as (client, _):
        response = await client.post("/api/show", json={"model": tiny_node.model_id})
        assert response.status_code == 200, response.text
        info = response.json()["model_info"]
        arch = tiny_node.config.architecture
        assert info[f"{arch}.block_count"] == tiny_node.config.num_layers
        assert info[f"{arch}.context_length"] == tiny_node.max_context

        missing = await client.post("/api/show", json={"model": "test-org/absent-GGUF"})
        assert missing.status_code == 404
        assert "exoquic pull" in missing.json()["error"]


async def test_show_of_a_broken_cached_file_is_a_503_naming_it(
    tiny_node: Node, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\xff" * 60)  # a download gone wrong
    cache_file(tmp_path / "cache", "test-org/broken-GGUF", "broken-Q4_K_M.gguf", broken)
    async with serving_on_demand(tiny_node, tmp_path / "cache") as (client, _):
        response = await client.post("/api/show", json={"model": "test-org/broken-GGUF:Q4_K_M"})
        assert response.status_code == 503, response.text
        assert "cannot read test-org/broken-GGUF/broken-Q4_K_M.gguf" in response.json()["error"]
