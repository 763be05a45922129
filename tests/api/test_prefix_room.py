"""The prefix caches a loaded model keeps count in its size on the node, and
go before any model is unloaded to make room (a real socket, models loaded
on demand from a cache)."""

from __future__ import annotations

from pathlib import Path

import trio
from api_helpers import CACHED_GGUF_ID, serving_on_demand

from exoquic.orchestration.node import Node

# Over one prefill chunk (128 tokens): only whole chunks of a prompt are kept.
TURN = [{"role": "user", "content": "Tell me about the sea, and then about the sky. " * 30}]


async def test_kept_prefix_caches_count_and_are_dropped_before_a_model(
    tiny_node: Node, gguf_cache: Path
) -> None:
    async with serving_on_demand(tiny_node, gguf_cache) as (client, models):
        body = {"model": CACHED_GGUF_ID, "messages": TURN, "max_tokens": 3, "temperature": 0}
        response = await client.post("/v1/chat/completions", json=body)
        assert response.status_code == 200, response.text
        node = models.node_of(CACHED_GGUF_ID)
        with trio.fail_after(5):  # the finished turn's cache is kept (its release runs after)
            while not node.cluster.ring.kept_bytes:
                await trio.sleep(0.02)

        def size() -> int:
            (report,) = [r for r in models.loaded() if r["model_id"] == CACHED_GGUF_ID]
            return int(report["size_bytes"])

        with_prefix = size()
        assert models.drop_kept_prefixes()  # what making room does first
        assert node.cluster.ring.kept_bytes == 0
        assert size() < with_prefix
        assert not models.drop_kept_prefixes()  # nothing left to drop
        assert CACHED_GGUF_ID in models.residency  # no model was unloaded for it
