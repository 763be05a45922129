"""`GET /metrics` read with prometheus_client's own text parser, around real
requests to a real `exoquic up` node (the session's node: other tests' traffic
shows too, so these assert on differences between two scrapes)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from api_helpers import RunningNode
from prometheus_client.parser import text_string_to_metric_families

from exoquic.defaults import PREFIX_CACHE_BYTES
from exoquic.models.registry import DEFAULT_MODEL_ID
from exoquic.orchestration.worker import PREFILL_CHUNK

pytestmark = pytest.mark.slow

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(node: RunningNode) -> Samples:
    response = httpx.get(f"{node.url}/metrics", headers=node.headers(), timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_tokens_and_timings(api_node: RunningNode) -> None:
    chat = "/v1/chat/completions"
    before = scrape(api_node)
    body = {
        "model": DEFAULT_MODEL_ID,
        "messages": [{"role": "user", "content": "Name three colors."}],
        "temperature": 0,
        "max_tokens": 5,
    }
    whole = httpx.post(f"{api_node.url}{chat}", json=body, headers=api_node.headers(), timeout=60)
    usage = whole.json()["usage"]
    with httpx.stream(
        "POST", f"{api_node.url}{chat}", json={**body, "stream": True},
        headers=api_node.headers(), timeout=60,
    ) as streamed:  # fmt: skip
        assert streamed.status_code == 200 and streamed.read()
    refused = httpx.post(f"{api_node.url}{chat}", json={"model": 3}, headers=api_node.headers())
    assert refused.status_code == 400
    api_node.wait_idle(timeout=10)
    after = scrape(api_node)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("exoquic_http_requests_total", endpoint=chat, status="200") == 2
    assert grew("exoquic_http_requests_total", endpoint=chat, status="400") == 1
    assert grew("exoquic_prompt_tokens_total", endpoint=chat) == 2 * usage["prompt_tokens"]
    assert grew("exoquic_completion_tokens_total", endpoint=chat) == 2 * usage["completion_tokens"]
    assert grew("exoquic_time_to_first_token_seconds_count", endpoint=chat) == 2
    assert grew("exoquic_time_to_first_token_seconds_sum", endpoint=chat) > 0
    # Every token after each reply's first text is timed once.
    between = grew("exoquic_inter_token_seconds_count", endpoint=chat)
    assert 0 < between <= 2 * (usage["completion_tokens"] - 1)
    assert grew("exoquic_ring_step_seconds_count") >= 2 * usage["completion_tokens"]
    assert value(after, "exoquic_plan_version") >= 0
    assert value(after, "exoquic_peers") == 0 and value(after, "exoquic_serving") == 1
    assert value(after, "exoquic_admission_queue_depth") == 0
    assert ("exoquic_kv_cache_bytes", ()) in after


def test_metrics_count_the_prefix_cache(api_node: RunningNode) -> None:
    """A chat's second turn starts from its first turn's kept caches: the hit,
    the positions it did not run and the kept bytes show."""
    history = " ".join(f"Note {i}: the metrics test's {i}th lamp is blue." for i in range(40))
    first = [{"role": "user", "content": f"Read these notes. {history}"}]
    body = {"model": DEFAULT_MODEL_ID, "temperature": 0, "max_tokens": 3}

    def chat(messages: list[dict[str, str]]) -> dict[str, Any]:
        response = httpx.post(f"{api_node.url}/v1/chat/completions", headers=api_node.headers(),
                              json={**body, "messages": messages}, timeout=120)  # fmt: skip
        assert response.status_code == 200, response.text
        return response.json()

    reply = chat(first)["choices"][0]["message"]["content"]
    api_node.wait_idle(timeout=10)
    before = scrape(api_node)
    chat([*first, {"role": "assistant", "content": reply}, {"role": "user", "content": "Why?"}])
    api_node.wait_idle(timeout=10)
    after = scrape(api_node)

    def grew(name: str) -> float:
        return value(after, name) - value(before, name)

    assert grew("exoquic_prefix_cache_hits_total") == 1
    assert grew("exoquic_ring_prefix_hits_total") == 1
    assert grew("exoquic_prefix_cache_reused_positions_total") >= PREFILL_CHUNK
    assert grew("exoquic_prefix_cache_reused_positions_total") == grew(
        "exoquic_ring_reused_positions_total"
    )
    assert value(after, "exoquic_prefix_cache_bytes") > 0
    assert value(after, "exoquic_prefix_cache_entries") >= 1
    assert value(after, "exoquic_prefix_cache_budget_bytes") == PREFIX_CACHE_BYTES


def test_metrics_need_the_api_key(api_node: RunningNode) -> None:
    assert httpx.get(f"{api_node.url}/metrics", timeout=10).status_code == 401
