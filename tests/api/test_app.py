"""The app in process: request validation, error shapes, security checks, SSE framing.

These run the real app, tokenizer, worker and MLX engine on a random 2-layer
model (see conftest `tiny_node`), so replies are nonsense but every code path
between the HTTP request and the engine is the real one.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from api_helpers import TINY_CONFIG, error_of, open_tiny_node, sse_payloads
from hypothesis import given, settings
from hypothesis import strategies as st

from exoquic.api.app import MAX_BODY_BYTES, create_app
from exoquic.api.security import LOOPBACK_NAMES, ApiSecurity
from exoquic.engines.mlx.engine import MLXEngine
from exoquic.models.registry import DEFAULT_MODEL_ID
from exoquic.models.tokenizer import Tokenizer

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
MODEL = DEFAULT_MODEL_ID
HELLO = [{"role": "user", "content": "Hello"}]


async def test_chat_completion_shape(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    response = await client.post(
        CHAT, json={"model": MODEL, "messages": HELLO, "max_tokens": 3, "temperature": 0}
    )
    assert response.status_code == 200
    body = json.loads(await response.get_data())
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["completion_tokens"] <= 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_greedy_is_deterministic_and_max_tokens_ends_with_length(
    tiny_app_factory: Any,
) -> None:
    client = tiny_app_factory().test_client()
    request = {"model": MODEL, "prompt": "The", "max_tokens": 4, "temperature": 0}
    bodies = [json.loads(await (await client.post(TEXT, json=request)).get_data()) for _ in "ab"]
    assert bodies[0]["choices"][0]["text"] == bodies[1]["choices"][0]["text"]
    assert bodies[0]["object"] == "text_completion"
    # Random weights rarely pick an end token in 4 steps; if they do, usage says so.
    if bodies[0]["choices"][0]["finish_reason"] == "length":
        assert bodies[0]["usage"]["completion_tokens"] == 4


async def test_seed_makes_sampling_repeatable(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    request = {"model": MODEL, "prompt": "The", "max_tokens": 6, "temperature": 1.5, "seed": 11}
    texts = [
        json.loads(await (await client.post(TEXT, json=request)).get_data())["choices"][0]["text"]
        for _ in "ab"
    ]
    assert texts[0] == texts[1]


async def test_stream_frames_role_deltas_finish_usage_and_done(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    response = await client.post(
        CHAT,
        json={
            "model": MODEL,
            "messages": HELLO,
            "max_tokens": 3,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    chunks = sse_payloads(await response.get_data())
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finishes[-1] in ("stop", "length") and not any(finishes[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 3


async def test_text_stream_without_usage(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    response = await client.post(
        TEXT, json={"model": MODEL, "prompt": [[504]], "max_tokens": 2, "stream": True}
    )
    chunks = sse_payloads(await response.get_data())
    assert all("usage" not in c and c["object"] == "text_completion" for c in chunks)


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "code"),
    [
        (CHAT, {"model": "gpt-4o", "messages": HELLO}, 404, "model", "model_not_found"),
        (CHAT, {"model": MODEL, "messages": HELLO, "temperature": "0"}, 400, "temperature", None),
        (CHAT, {"model": MODEL, "messages": HELLO, "n": 9}, 400, "n", None),
        (
            CHAT,
            {"model": MODEL, "messages": HELLO, "logit_bias": {"49152": 1}},
            400,
            "logit_bias",
            None,
        ),
        (
            CHAT,
            {
                "model": MODEL,
                "messages": HELLO,
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "strin"}},
                },
            },
            400,
            "response_format",
            None,
        ),
        (
            CHAT,
            {"model": MODEL, "messages": HELLO, "tools": [{"type": "fn"}]},
            400,
            "tools[0]",
            None,
        ),
        (CHAT, {"model": MODEL, "messages": "hi"}, 400, "messages", None),
        (
            CHAT,
            {"model": MODEL, "messages": [{"role": "user", "content": "x", "tool_call_id": "1"}]},
            400,
            "messages[0].tool_call_id",
            None,
        ),
        (CHAT, {"model": MODEL, "messages": HELLO, "max_tokens": 250}, 400, "max_tokens", None),
        (CHAT, {"model": MODEL, "messages": HELLO, "max_tokens": -1}, 400, "max_tokens", None),
        (CHAT, [1, 2], 400, None, None),
        (TEXT, {"model": MODEL, "prompt": " x" * 300}, 400, "prompt", "context_length_exceeded"),
        (TEXT, {"model": MODEL, "prompt": ""}, 400, "prompt", None),
        (TEXT, {"model": MODEL, "prompt": [49152]}, 400, "prompt", None),
        (TEXT, {"model": MODEL, "prompt": "x", "echo": 1}, 400, "echo", None),
        (TEXT, {"model": MODEL, "prompt": "x", "logprobs": 6}, 400, "logprobs", None),
        (CHAT, {"model": MODEL, "messages": HELLO, "top_logprobs": 2}, 400, "top_logprobs", None),
    ],
)
async def test_refusals_are_openai_errors(
    tiny_app_factory: Any,
    path: str,
    body: Any,
    status: int,
    param: str | None,
    code: str | None,
) -> None:
    response = await tiny_app_factory().test_client().post(path, json=body)
    assert response.status_code == status
    error = error_of(await response.get_data())
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code


async def test_sdk_echoed_assistant_messages_are_accepted(tiny_app_factory: Any) -> None:
    """The SDK's `message.model_dump()` carries empty refusal/tool_calls/... fields."""
    echoed = {"role": "assistant", "content": "Hi", "refusal": None, "tool_calls": None}
    messages = [*HELLO, echoed, {"role": "user", "content": "Again"}]
    response = (
        await tiny_app_factory()
        .test_client()
        .post(CHAT, json={"model": MODEL, "messages": messages, "max_tokens": 1})
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{bad", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100_000, "not valid JSON"),
        (b'{"max_tokens": 1' + b"0" * 5000 + b"}", "not valid JSON"),
        (b"", "not valid JSON"),
    ],
)
async def test_malformed_bodies_are_400(tiny_app_factory: Any, body: bytes, fragment: str) -> None:
    response = await tiny_app_factory().test_client().post(CHAT, data=body)
    assert response.status_code == 400
    assert fragment in error_of(await response.get_data())["message"]


async def test_oversized_body_is_413_in_openai_shape(tiny_app_factory: Any) -> None:
    response = await tiny_app_factory().test_client().post(CHAT, data=b" " * (MAX_BODY_BYTES + 1))
    assert response.status_code == 413
    assert error_of(await response.get_data())["code"] == "request_too_large"


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", CHAT, 405),
        ("DELETE", "/v1/models", 405),
        ("GET", "/v1/nope", 404),
        ("POST", "/x", 404),
    ],
)
async def test_wrong_method_or_path(
    tiny_app_factory: Any, method: str, path: str, status: int
) -> None:
    response = await tiny_app_factory().test_client().open(path, method=method)
    assert response.status_code == status
    assert path in error_of(await response.get_data())["message"]


async def test_models_health_openapi(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    models = await (await client.get("/v1/models")).get_json()
    assert [m["id"] for m in models["data"]] == [MODEL]
    assert (await client.get(f"/v1/models/{MODEL}")).status_code == 200
    assert (await client.get("/v1/models/nope")).status_code == 404
    health = await (await client.get("/health")).get_json()
    assert health["kv_caches"] == 0 and health["active_requests"] == 0
    assert health["rss_bytes"] > 0
    document = await (await client.get("/openapi.json")).get_json()
    assert CHAT in document["paths"] and TEXT in document["paths"]


# --- security: the checks in front of every route


def loopback_policy(**overrides: Any) -> ApiSecurity:
    return ApiSecurity(**{"allowed_hosts": frozenset(LOOPBACK_NAMES), **overrides})


async def test_key_is_required_except_on_public_paths(tiny_app_factory: Any) -> None:
    client = tiny_app_factory(loopback_policy(api_key="k1")).test_client()
    refused = await client.get("/v1/models")
    assert refused.status_code == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert error_of(await refused.get_data())["code"] == "invalid_api_key"
    wrong = await client.get("/v1/models", headers={"Authorization": "Bearer k2"})
    assert wrong.status_code == 401
    right = await client.get("/v1/models", headers={"Authorization": "Bearer k1"})
    assert right.status_code == 200
    for public in ("/", "/health", "/openapi.json", "/static/app.js"):
        assert (await client.get(public)).status_code == 200, public


async def test_dns_rebinding_host_is_refused(tiny_app_factory: Any) -> None:
    client = tiny_app_factory(loopback_policy()).test_client()
    for host in ("attacker.example", "attacker.example:52415", "127.0.0.1.nip.io"):
        response = await client.get("/v1/models", headers={"Host": host})
        assert response.status_code == 403, host
        assert error_of(await response.get_data())["code"] == "host_not_allowed"
    for host in ("127.0.0.1:52415", "localhost", "[::1]:52415"):
        assert (await client.get("/v1/models", headers={"Host": host})).status_code == 200


async def test_cross_site_post_is_refused_but_same_origin_passes(tiny_app_factory: Any) -> None:
    client = tiny_app_factory(loopback_policy()).test_client()
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 1}
    host = {"Host": "127.0.0.1:52415"}
    for origin in ("http://evil.example", "null", "http://localhost:3000"):
        response = await client.post(CHAT, json=body, headers={**host, "Origin": origin})
        assert response.status_code == 403, origin
        assert "Access-Control-Allow-Origin" not in response.headers
    same = await client.post(CHAT, json=body, headers={**host, "Origin": "http://127.0.0.1:52415"})
    assert same.status_code == 200


async def test_cors_only_for_listed_origins(tiny_app_factory: Any) -> None:
    origin = "https://app.example"
    client = tiny_app_factory(
        loopback_policy(api_key="k", allowed_origins=frozenset({origin}))
    ).test_client()
    preflight = await client.options(
        CHAT,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204  # no key on preflights: browsers never send one
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    listed = await client.get("/v1/models", headers={"Origin": origin, "Authorization": "Bearer k"})
    assert listed.headers["Access-Control-Allow-Origin"] == origin
    other = await client.options(CHAT, headers={"Origin": "https://other.example"})
    assert other.status_code == 403
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_ui_page_has_a_strict_content_security_policy(tiny_app_factory: Any) -> None:
    response = await tiny_app_factory().test_client().get("/")
    assert response.status_code == 200
    policy = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"


# --- property: whatever the body, the answer is a success or an OpenAI-shaped 4xx

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELD_VALUES = st.one_of(
    JSON_VALUES,
    st.sampled_from(
        [MODEL, "gpt-4o", 0, 0.5, 1, 2.5, -1, True, "stop", ["a", "b"], {"include_usage": True}]
    ),
)
FIELDS = st.sampled_from(
    [
        "temperature",
        "top_p",
        "top_k",
        "stop",
        "seed",
        "stream",
        "stream_options",
        "n",
        "max_completion_tokens",
        "logprobs",
        "user",
        "response_format",
        "echo",
        "suffix",
        "tools",
    ]
)
BODIES = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries(
        {
            "model": st.sampled_from([MODEL, "other"]),
            "messages": st.just(HELLO),
            "prompt": st.just("Hi"),
        },
    ).flatmap(
        lambda base: st.dictionaries(FIELDS, FIELD_VALUES, max_size=4).map(
            lambda extra: {**base, **extra}
        )
    ),
)


@settings(max_examples=150, deadline=None)
@given(path=st.sampled_from([CHAT, TEXT]), body=BODIES)
def test_any_body_gets_success_or_openai_4xx(
    tiny_engine: MLXEngine, smollm2_tokenizer: Tokenizer, path: str, body: Any
) -> None:
    if isinstance(body, dict) and "model" in body:
        body = {k: v for k, v in body.items() if k != ("prompt" if path == CHAT else "messages")}
        body["max_tokens"] = 2  # keep accepted requests short
    status, data = trio.run(post_to_tiny_node, tiny_engine, smollm2_tokenizer, path, body)
    if status == 200:
        if body.get("stream") is True:
            sse_payloads(data)
        else:
            assert json.loads(data)["usage"]["completion_tokens"] <= 2
    else:
        assert status in (400, 404), data
        error_of(data)
    assert tiny_engine.active_requests() == 0


async def post_to_tiny_node(
    engine: MLXEngine, tokenizer: Tokenizer, path: str, body: Any
) -> tuple[int, bytes]:
    # A sync test with its own trio run per example: hypothesis cannot drive
    # pytest-trio's async fixtures.
    async with open_tiny_node(engine, tokenizer) as node:
        response = await create_app(node).test_client().post(path, json=body)
        return response.status_code, await response.get_data()


async def test_engine_failure_is_a_500_or_an_error_event(smollm2_tokenizer: Tokenizer) -> None:
    """An engine with no weights fails every step: a whole reply is a 500, a
    stream that already answered 200 ends with an error event and [DONE]."""
    unloaded = MLXEngine(max_context=TINY_CONFIG.max_context)
    async with open_tiny_node(unloaded, smollm2_tokenizer) as node:
        client = create_app(node).test_client()
        body = {"model": MODEL, "messages": HELLO, "max_tokens": 2}
        whole = await client.post(CHAT, json=body)
        assert whole.status_code in (500, 503)
        assert error_of(await whole.get_data())["type"] == "server_error"
        stream = await client.post(CHAT, json={**body, "stream": True})
        assert stream.status_code == 200
        events = sse_payloads(await stream.get_data())
        assert events[0]["choices"][0]["delta"]["role"] == "assistant"
        assert events[-1]["error"]["type"] == "server_error"
        assert node.active_requests == 0
