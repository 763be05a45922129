"""`/openapi.json` stays in step with what the validators accept and the routes the app has."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from exoquic.api.openapi import openapi_document
from exoquic.api.schemas import (
    CHAT_FIELDS,
    COMMON_FIELDS,
    TEXT_FIELDS,
    parse_chat_request,
    parse_text_request,
)


def schema(name: str) -> dict[str, Any]:
    return openapi_document()["components"]["schemas"][name]  # type: ignore[no-any-return]


def test_documented_fields_are_exactly_the_accepted_ones() -> None:
    assert set(schema("ChatCompletionRequest")["properties"]) == COMMON_FIELDS | CHAT_FIELDS
    assert set(schema("CompletionRequest")["properties"]) == COMMON_FIELDS | TEXT_FIELDS
    assert schema("ChatCompletionRequest")["additionalProperties"] is False


async def test_documented_paths_are_routed(tiny_app_factory: Any) -> None:
    app = tiny_app_factory()
    routed = {rule.rule.replace("<path:model>", "{model}") for rule in app.url_map.iter_rules()}
    document = openapi_document()
    assert set(document["paths"]) <= routed
    client = app.test_client()
    assert await (await client.get("/openapi.json")).get_json() == document


def test_document_is_a_fresh_copy() -> None:
    openapi_document()["paths"].clear()
    assert openapi_document()["paths"]


# Requests valid by the document's schema; every one must parse.
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant"])},
        optional={"name": st.text(max_size=5)},
    ).flatmap(
        lambda m: st.one_of(
            st.text(max_size=20),
            st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=5)})),
        ).map(lambda content: {**m, "content": content})
    ),
    min_size=1,
    max_size=4,
)
OPTIONAL = {
    "temperature": st.none() | st.floats(0, 2),
    "top_p": st.none() | st.floats(0, 1, exclude_min=True),
    "top_k": st.none() | st.integers(0, 1000),
    "max_tokens": st.none() | st.integers(1, 10_000),
    "stop": st.none()
    | st.text(min_size=1, max_size=4)
    | st.lists(st.text(min_size=1, max_size=4), max_size=4),
    "seed": st.none() | st.integers(0, 2**63 - 1),
    "n": st.none() | st.integers(1, 8),
    "min_p": st.none() | st.floats(0, 1),
    "presence_penalty": st.none() | st.floats(-2, 2),
    "frequency_penalty": st.none() | st.floats(-2, 2),
    "repetition_penalty": st.none() | st.floats(0, 10, exclude_min=True),
    "logit_bias": st.none()
    | st.dictionaries(st.integers(0, 10**9).map(str), st.floats(-100, 100), max_size=3),
    "user": st.text(max_size=5),
}


@given(
    st.fixed_dictionaries(
        {"model": st.text(min_size=1, max_size=10), "messages": MESSAGES},
        optional={
            **OPTIONAL,
            "max_completion_tokens": st.none() | st.integers(1, 10_000),
            "response_format": st.sampled_from(
                [
                    {"type": "text"},
                    {"type": "json_object"},
                    None,
                    {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}},
                ]
            ),
            "logprobs": st.none() | st.booleans(),
        },
    ),
    st.none() | st.booleans(),
    st.none() | st.integers(0, 20),
)
def test_schema_valid_chat_requests_parse(
    body: dict[str, Any], include_usage: bool | None, top_logprobs: int | None
) -> None:
    if top_logprobs is not None:  # as the schema's description says, it needs logprobs
        body = {**body, "logprobs": True, "top_logprobs": top_logprobs}
    if include_usage is not None:
        body = {**body, "stream": True, "stream_options": {"include_usage": include_usage}}
    request = parse_chat_request(body)
    assert len(request.messages) == len(body["messages"])


@given(
    st.fixed_dictionaries(
        {
            "model": st.text(min_size=1, max_size=10),
            "prompt": st.text() | st.lists(st.integers(0, 49151), min_size=1, max_size=8),
        },
        optional={
            **OPTIONAL,
            "echo": st.just(False),
            "best_of": st.just(1),
            "logprobs": st.none() | st.integers(0, 5),
        },
    )
)
def test_schema_valid_text_requests_parse(body: dict[str, Any]) -> None:
    request = parse_text_request(body)
    expected = body["prompt"] if isinstance(body["prompt"], str) else tuple(body["prompt"])
    assert request.prompt == expected
