"""`/health` over a real socket: liveness for anyone, the node's details only
for callers holding the API key when one is set."""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import httpx
from api_helpers import CACHED_GGUF_ID, serving, serving_on_demand

from exoquic.api.app import create_app
from exoquic.api.security import LOOPBACK_NAMES, ApiSecurity
from exoquic.orchestration.node import Node

KEY = "exq-health-test-key"
DETAILS = {"model", "engine", "active_requests", "kv_caches", "prefix_caches", "models",
           "admission", "rss_bytes"}  # fmt: skip


def served(node: Node, security: ApiSecurity) -> AbstractAsyncContextManager[httpx.AsyncClient]:
    return serving(create_app(node, security))


async def test_with_a_key_health_tells_strangers_only_that_the_node_is_up(
    tiny_node: Node,
) -> None:
    policy = ApiSecurity(api_key=KEY, allowed_hosts=frozenset(LOOPBACK_NAMES))
    async with served(tiny_node, policy) as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            anonymous = await client.get("/health", headers=headers)
            assert anonymous.status_code == 200
            assert anonymous.json() == {"status": "ok"}
        authorized = await client.get("/health", headers={"Authorization": f"Bearer {KEY}"})
        assert authorized.status_code == 200
        assert set(authorized.json()) >= DETAILS


async def test_without_a_key_health_shows_everything(tiny_node: Node) -> None:
    policy = ApiSecurity(allowed_hosts=frozenset(LOOPBACK_NAMES))
    async with served(tiny_node, policy) as client:
        report = (await client.get("/health")).json()
        assert set(report) >= DETAILS and report["status"] == "ok"


async def test_kv_caches_count_every_loaded_model(tiny_node: Node, gguf_cache: Path) -> None:
    async with serving_on_demand(tiny_node, gguf_cache) as (client, _):
        load = await client.post("/api/generate", json={"model": CACHED_GGUF_ID})
        assert load.json()["done_reason"] == "load"
        body = {"model": CACHED_GGUF_ID, "prompt": "Once upon a time", "max_tokens": 2000,
                "temperature": 0, "stream": True}  # fmt: skip
        async with client.stream("POST", "/v1/completions", json=body) as stream:
            async for line in stream.aiter_lines():  # generating once a token has come
                if line.startswith("data: {"):
                    break
            report = (await client.get("/health")).json()
        assert report["loaded_models"] == [tiny_node.model_id, CACHED_GGUF_ID]
        assert report["models"][CACHED_GGUF_ID]["kv_caches"] == 1, json.dumps(report)
        assert report["models"][tiny_node.model_id]["kv_caches"] == 0
        assert report["kv_caches"] == 1  # the on-demand model's cache counts too
