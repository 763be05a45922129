"""The prefix cache through the real API: `exoquic up` processes on loopback
(one node, and a ring of two), a tiny random model with the real tokenizer.

A chat's second turn starts from the caches its first turn left on every node:
the engines' counters (`/v1/topology` stats) show that only the positions after
the first turn's whole prompt chunks ran, and its answer equals that of a node
without a prefix cache (greedy and seeded).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ring_nodes import RingNode, engine_under_test, make_nodes, running, wait_serving
from test_large_prompts import MODEL, write_tiny_model

from exoquic.orchestration.worker import PREFILL_CHUNK

pytestmark = pytest.mark.slow

HISTORY = " ".join(f"Fact {i}: the {i}th stone of the wall is grey and old." for i in range(30))
FIRST = [{"role": "user", "content": f"Remember these facts. {HISTORY}"}]
SAMPLINGS = {"greedy": {"temperature": 0}, "seeded": {"temperature": 0.9, "seed": 11}}
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def rings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[RingNode]]]:
    """A node with a prefix cache, one without, and a ring of two with."""
    model = write_tiny_model(tmp_path_factory.mktemp("model") / MODEL)
    engine = engine_under_test()

    def ring(name: str, size: int, *extra: str) -> list[RingNode]:
        names = [f"{name}{i}" for i in range(size)]
        root = tmp_path_factory.mktemp(name)
        return make_nodes(root, names, [engine] * size, extra=("--model", str(model), *extra))

    groups = {"solo": ring("solo", 1), "cold": ring("cold", 1, "--prefix-cache", "0"),
              "pair": ring("pair", 2)}  # fmt: skip
    everyone = [node for nodes in groups.values() for node in nodes]
    with running(everyone):
        for nodes in groups.values():
            wait_serving(nodes, len(nodes))
        yield groups


def chat(
    node: RingNode, messages: list[dict[str, str]], sampling: dict[str, Any]
) -> dict[str, Any]:
    body = {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, **sampling}
    response = httpx.post(f"{node.url}/v1/chat/completions", json=body, timeout=120)
    response.raise_for_status()
    return response.json()


def stats(node: RingNode) -> dict[str, Any]:
    return node.topology()["stats"]


@pytest.mark.parametrize("ring", ["solo", "pair"])
@pytest.mark.parametrize("sampling", list(SAMPLINGS))
def test_second_turn_runs_only_new_positions_and_answers_like_a_cold_node(
    rings: dict[str, list[RingNode]], ring: str, sampling: str
) -> None:
    nodes, params = rings[ring], SAMPLINGS[sampling]
    first = chat(nodes[0], FIRST, params)
    second_messages = [
        *FIRST,
        {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
        {"role": "user", "content": f"Which stone is number {len(sampling)}?"},
    ]
    before = [stats(node) for node in nodes]
    second = chat(nodes[0], second_messages, params)
    after = [stats(node) for node in nodes]

    cold = chat(rings["cold"][0], second_messages, params)
    assert second["choices"][0]["message"] == cold["choices"][0]["message"]

    # The first turn's prompt is the second's beginning: its whole chunks were reused.
    reused = first["usage"]["prompt_tokens"] // PREFILL_CHUNK * PREFILL_CHUNK
    origin = [a["ring"]["reused_positions"] - b["ring"]["reused_positions"]
              for a, b in zip(after[:1], before[:1], strict=True)]  # fmt: skip
    assert reused > 0 and origin == [reused]
    usage = second["usage"]
    ran = usage["prompt_tokens"] - reused + usage["completion_tokens"] - 1
    for a, b in zip(after, before, strict=True):
        assert a["worker"]["positions_run"] - b["worker"]["positions_run"] == ran
        assert a["ring"]["prefix_cache"]["hits"] == b["ring"]["prefix_cache"]["hits"] + 1
