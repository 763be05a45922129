"""The model's recommended sampling and max_tokens fill in what a request leaves out."""

from __future__ import annotations

import json
from typing import Any

from api_helpers import TINY_CONFIG

from exoquic.models.generation_defaults import GenerationDefaults
from exoquic.models.registry import DEFAULT_MODEL_ID
from exoquic.orchestration.node import Node

TEXT = "/v1/completions"


async def complete(client: Any, **fields: Any) -> dict[str, Any]:
    response = await client.post(TEXT, json={"model": DEFAULT_MODEL_ID, "prompt": "The", **fields})
    assert response.status_code == 200, await response.get_data()
    return json.loads(await response.get_data())  # type: ignore[no-any-return]


async def test_models_entries_show_the_defaults(tiny_node: Node, tiny_app_factory: Any) -> None:
    tiny_node.defaults = GenerationDefaults(temperature=0.3, top_p=0.8, top_k=5, max_tokens=77)
    client = tiny_app_factory().test_client()
    entry = (await (await client.get("/v1/models")).get_json())["data"][0]
    expected = {"temperature": 0.3, "top_p": 0.8, "top_k": 5, "max_tokens": 77}
    assert entry["defaults"] == expected
    one = await (await client.get(f"/v1/models/{DEFAULT_MODEL_ID}")).get_json()
    assert one["defaults"] == expected


async def test_without_max_tokens_the_reply_stops_at_the_models_default(
    tiny_node: Node, tiny_app_factory: Any
) -> None:
    tiny_node.defaults = GenerationDefaults(max_tokens=2)
    body = await complete(tiny_app_factory().test_client(), temperature=0)
    assert body["usage"]["completion_tokens"] <= 2
    if body["usage"]["completion_tokens"] == 2:
        assert body["choices"][0]["finish_reason"] == "length"


async def test_a_default_beyond_the_context_is_cut_to_the_room_left_not_refused(
    tiny_node: Node, tiny_app_factory: Any
) -> None:
    tiny_node.defaults = GenerationDefaults(max_tokens=10 * TINY_CONFIG.max_context)
    client = tiny_app_factory().test_client()
    body = await complete(client, temperature=0)
    assert body["usage"]["total_tokens"] <= TINY_CONFIG.max_context
    # A number the client asks for is still checked against the context.
    response = await client.post(
        TEXT,
        json={
            "model": DEFAULT_MODEL_ID,
            "prompt": "The",
            "max_tokens": 10 * TINY_CONFIG.max_context,
        },
    )
    assert response.status_code == 400


async def test_omitted_sampling_is_the_models_and_given_sampling_wins(
    tiny_node: Node, tiny_app_factory: Any
) -> None:
    tiny_node.defaults = GenerationDefaults(temperature=1.5, top_p=0.9, top_k=20, max_tokens=8)
    client = tiny_app_factory().test_client()
    omitted = await complete(client, seed=7)
    nulls = await complete(client, seed=7, temperature=None, top_p=None, top_k=None)
    spelled_out = await complete(client, seed=7, temperature=1.5, top_p=0.9, top_k=20)
    greedy = await complete(client, temperature=0)
    greedy_again = await complete(client, temperature=0, seed=7)

    def text(body: dict[str, Any]) -> str:
        return str(body["choices"][0]["text"])

    assert text(omitted) == text(nulls) == text(spelled_out)
    assert text(greedy) == text(greedy_again)
    # Sampling at 1.5 over a random model's vocabulary does not retrace the greedy path.
    assert text(omitted) != text(greedy)
