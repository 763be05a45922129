"""`/health` over a real socket: liveness for anyone, the node's details only
for callers holding the API key when one is set."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import httpx
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from exoquic.api.app import create_app
from exoquic.api.security import LOOPBACK_NAMES, ApiSecurity
from exoquic.orchestration.node import Node

KEY = "exq-health-test-key"
DETAILS = {"model", "engine", "active_requests", "kv_caches", "prefix_caches", "admission",
           "rss_bytes"}  # fmt: skip


@asynccontextmanager
async def served(node: Node, security: ApiSecurity) -> AsyncIterator[httpx.AsyncClient]:
    """Hypercorn on a free loopback port; a client for it."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    app = create_app(node, security)
    async with trio.open_nursery() as nursery:
        run_server = partial(serve, app, config, shutdown_trigger=trio.sleep_forever)
        [url] = await nursery.start(run_server)
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            yield client
        nursery.cancel_scope.cancel()


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
