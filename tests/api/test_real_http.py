"""Raw HTTP against a real node: what only a real server and socket can show.

Client disconnects must cancel generation and free the KV cache; body limits,
routing errors and host checks must hold on the real Hypercorn server, not
just in the test client.
"""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import httpx
import pytest
from api_helpers import RunningNode

from exoquic.api.app import MAX_BODY_BYTES
from exoquic.models.registry import DEFAULT_MODEL_ID, get_model
from exoquic.models.tokenizer import Tokenizer

pytestmark = pytest.mark.slow

LONG_STORY = {
    "model": DEFAULT_MODEL_ID,
    "prompt": "Once upon a time",
    "temperature": 0,
    "max_tokens": 1000,
}


def wait_until_busy(node: RunningNode, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while node.health()["kv_caches"] == 0:
        assert time.monotonic() < deadline, "the request never reached the engine"
        time.sleep(0.05)


def test_disconnect_mid_stream_frees_the_request(api_node: RunningNode) -> None:
    with (
        httpx.Client(timeout=120, headers=api_node.headers()) as client,
        client.stream(
            "POST", f"{api_node.url}/v1/completions", json={**LONG_STORY, "stream": True}
        ) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [line for line, _ in zip(lines, range(6), strict=False) if line]
        assert len(received) >= 2
        health = api_node.health()
        assert health["active_requests"] == 1 and health["kv_caches"] == 1
    closed = time.monotonic()
    api_node.wait_idle(timeout=10)
    # Well before the 1000 tokens it asked for: cancelled, not run to the end.
    assert time.monotonic() - closed < 10


def test_disconnect_while_waiting_for_a_whole_reply_frees_it(api_node: RunningNode) -> None:
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{api_node.url}/v1/completions",
            json=LONG_STORY,
            headers=api_node.headers(),
            timeout=httpx.Timeout(10, read=4),
        )
    api_node.wait_idle(timeout=10)


def test_oversized_body_is_413_on_the_real_server(api_node: RunningNode) -> None:
    response = httpx.post(
        f"{api_node.url}/v1/chat/completions",
        content=b"x" * (MAX_BODY_BYTES + 1),
        headers={**api_node.headers(), "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_malformed_json_wrong_method_unknown_path(api_node: RunningNode) -> None:
    with httpx.Client(base_url=api_node.url, headers=api_node.headers(), timeout=30) as client:
        bad = client.post("/v1/chat/completions", content=b'{"model": ')
        assert bad.status_code == 400
        assert "not valid JSON" in bad.json()["error"]["message"]
        assert client.get("/v1/chat/completions").status_code == 405
        missing = client.post("/v1/embeddings", json={})
        assert missing.status_code == 404
        assert missing.json()["error"]["message"] == "Invalid URL (POST /v1/embeddings)"


def test_dns_rebinding_host_is_refused_on_the_wire(api_node: RunningNode) -> None:
    port = urlsplit(api_node.url).port
    for host, status in ((f"rebind.attacker.example:{port}", 403), (f"localhost:{port}", 200)):
        response = httpx.get(
            f"{api_node.url}/v1/models", headers={**api_node.headers(), "Host": host}
        )
        assert response.request.headers["Host"] == host
        assert response.status_code == status, host
    assert response.status_code == 200


def test_cross_site_browser_post_is_refused(api_node: RunningNode) -> None:
    response = httpx.post(
        f"{api_node.url}/v1/completions",
        json={**LONG_STORY, "max_tokens": 1},
        headers={**api_node.headers(), "Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers


def test_health_reports_counters(api_node: RunningNode) -> None:
    health = api_node.wait_idle()
    assert health["status"] == "ok" and health["model"] == DEFAULT_MODEL_ID
    assert isinstance(health["rss_bytes"], int) and health["rss_bytes"] > 50 * 2**20
    document = httpx.get(f"{api_node.url}/openapi.json").json()
    assert document["openapi"].startswith("3.")


def test_topology_gives_each_planned_node_its_model_bytes(api_node: RunningNode) -> None:
    topology = httpx.get(f"{api_node.url}/v1/topology", headers=api_node.headers()).json()
    entry = get_model(DEFAULT_MODEL_ID)
    (node,) = topology["nodes"]
    assert node["layers"] == [0, entry.num_layers - 1]
    # The whole model on one node: every layer, the embedding and the head.
    expected = entry.num_layers * entry.bytes_per_layer + entry.embed_bytes + entry.head_bytes
    assert node["memory"]["model"] == expected
    assert 0 < node["memory"]["model"] < node["memory"]["total"]


def test_lm_eval_style_scoring(api_node: RunningNode, smollm2_tokenizer: Tokenizer) -> None:
    """lm-evaluation-harness's local-completions loglikelihood request and reading
    (its openai_completions.py): one batch of token ids, echo, logprobs 1, max_tokens
    1; the continuation's log-likelihood is token_logprobs[ctxlen:-1]."""
    context = smollm2_tokenizer.encode("The capital of France is")

    def score(continuation: str) -> tuple[float, bool]:
        tokens = context + smollm2_tokenizer.encode(continuation)
        payload = {"model": DEFAULT_MODEL_ID, "prompt": [tokens], "temperature": 0,
                   "max_tokens": 1, "logprobs": 1, "seed": 1234, "echo": True}  # fmt: skip
        response = httpx.post(
            f"{api_node.url}/v1/completions", json=payload, headers=api_node.headers(), timeout=120
        )
        response.raise_for_status()
        logprobs = response.json()["choices"][0]["logprobs"]
        assert len(logprobs["token_logprobs"]) == len(tokens) + 1
        values = logprobs["token_logprobs"][len(context) : -1]
        tops = logprobs["top_logprobs"][len(context) : -1]
        greedy = all(value == max(top.values()) for value, top in zip(values, tops, strict=True))
        return sum(values), greedy

    paris, paris_greedy = score(" Paris")
    london, london_greedy = score(" London")
    assert paris > london and paris_greedy and not london_greedy
