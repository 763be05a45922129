"""Log-probabilities across a ring of 2 real `exoquic up` processes on loopback,
with the real model, against one node alone: the last shard computes them from
the same logits whichever node it is, so the numbers agree within the engines'
tolerance (MLX float32; each shard's layers run the same kernels either way)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ring_nodes import RingNode, engine_under_test, make_nodes, running, wait_serving

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"
# Per token: the ring's hidden state crosses the network as float32 (no rounding),
# but the shards' matrix shapes differ from one node's, so the sums may round apart.
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def solo_and_ring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RingNode]]:
    engine = engine_under_test()
    (solo,) = make_nodes(tmp_path_factory.mktemp("solo"), ["solo"], [engine])
    ring = make_nodes(tmp_path_factory.mktemp("ring2"), ["p0", "p1"], [engine] * 2)
    with running([solo]), running(ring):
        wait_serving([solo], 1)
        wait_serving(ring, 2)
        yield [solo, *ring]


def post(node: RingNode, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"{node.url}{path}", json={"model": MODEL, **body}, timeout=300)
    response.raise_for_status()
    return response.json()


def test_echo_logprobs_agree_between_a_ring_and_one_node(solo_and_ring: list[RingNode]) -> None:
    solo, *ring = solo_and_ring
    body = {"prompt": "The capital of France is Paris.", "max_tokens": 1, "echo": True,
            "logprobs": 3, "temperature": 0}  # fmt: skip
    one = post(solo, "/v1/completions", body)["choices"][0]["logprobs"]
    for origin in ring:
        two = post(origin, "/v1/completions", body)["choices"][0]["logprobs"]
        assert two["tokens"] == one["tokens"]
        assert two["token_logprobs"][0] is None
        assert two["token_logprobs"][1:] == pytest.approx(one["token_logprobs"][1:], abs=TOLERANCE)
        for mine, theirs in zip(two["top_logprobs"][1:], one["top_logprobs"][1:], strict=True):
            assert mine.keys() == theirs.keys()
            assert list(mine.values()) == pytest.approx(list(theirs.values()), abs=TOLERANCE)
        total = sum(two["token_logprobs"][1:])
        assert total == pytest.approx(sum(one["token_logprobs"][1:]), abs=TOLERANCE * 10)


def test_chat_logprobs_agree_between_a_ring_and_one_node(solo_and_ring: list[RingNode]) -> None:
    solo, *ring = solo_and_ring
    body = {"messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 8, "temperature": 0, "logprobs": True, "top_logprobs": 2}  # fmt: skip
    one = post(solo, "/v1/chat/completions", body)["choices"][0]
    two = post(ring[0], "/v1/chat/completions", body)["choices"][0]
    assert two["message"]["content"] == one["message"]["content"]
    mine, theirs = two["logprobs"]["content"], one["logprobs"]["content"]
    assert [e["token"] for e in mine] == [e["token"] for e in theirs]
    assert [e["logprob"] for e in mine] == pytest.approx(
        [e["logprob"] for e in theirs], abs=TOLERANCE
    )
