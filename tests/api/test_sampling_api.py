"""Sampling knobs, n choices and structured output through the app, in process
(the real app, tokenizer, worker and MLX engine on a random 2-layer model, so
only the constraints make its output JSON: see conftest `tiny_node`)."""

from __future__ import annotations

import json
from typing import Any

import trio
from api_helpers import sse_payloads

from exoquic.api.openai_routes import Replies, choice_pieces
from exoquic.engines.sampling import SamplingParams
from exoquic.models.registry import DEFAULT_MODEL_ID
from exoquic.orchestration.generation import GenerationRequest

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
MODEL = DEFAULT_MODEL_ID
HELLO = [{"role": "user", "content": "Hello"}]
COLOR = {
    "type": "object",
    "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"}},
    "required": ["color", "ok"],
    "additionalProperties": False,
}


async def post(client: Any, path: str, **body: Any) -> dict[str, Any]:
    response = await client.post(path, json={"model": MODEL, **body})
    assert response.status_code == 200, await response.get_data()
    return json.loads(await response.get_data())  # type: ignore[no-any-return]


def texts(body: dict[str, Any]) -> list[str]:
    return [c["message"]["content"] if "message" in c else c["text"] for c in body["choices"]]


async def test_json_schema_makes_a_random_model_answer_valid_json(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    response_format = {"type": "json_schema", "json_schema": {"name": "c", "schema": COLOR}}
    for seed in range(3):
        body = await post(client, CHAT, messages=HELLO, max_tokens=40, temperature=1.0,
                          seed=seed, response_format=response_format)  # fmt: skip
        value = json.loads(texts(body)[0])
        assert value["color"] in ("red", "green", "blue") and isinstance(value["ok"], bool)
        assert body["choices"][0]["finish_reason"] == "stop"
    plain = await post(client, CHAT, messages=HELLO, max_tokens=40, temperature=1.0, seed=0)
    assert not texts(plain)[0].startswith('{"color": ')


async def test_json_object_gives_an_object(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    body = await post(client, CHAT, messages=HELLO, max_tokens=60, temperature=0,
                      response_format={"type": "json_object"})  # fmt: skip
    text = texts(body)[0]
    assert text.startswith("{")
    if body["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(text), dict)


async def test_a_bias_outside_the_vocabulary_is_refused(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    response = await client.post(CHAT, json={
        "model": MODEL, "messages": HELLO, "logit_bias": {"49152": 1},
    })  # fmt: skip
    assert response.status_code == 400
    assert json.loads(await response.get_data())["error"]["param"] == "logit_bias"


async def test_n_choices_are_seeded_seed_plus_index(tiny_app_factory: Any) -> None:
    request = {"prompt": "The", "max_tokens": 6, "temperature": 1.0}
    app = tiny_app_factory()
    client = app.test_client()
    body = await post(client, TEXT, n=3, seed=40, **request)
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    # the choices' decode steps rode in the engine's batches together
    assert app.config["EXOQUIC_NODE"].cluster.worker.statistics().largest_batch > 1
    singles = [await post(client, TEXT, seed=40 + i, **request) for i in range(3)]
    assert texts(body) == [texts(single)[0] for single in singles]
    assert len(set(texts(body))) > 1
    used = sum(single["usage"]["completion_tokens"] for single in singles)
    assert body["usage"]["completion_tokens"] == used


async def test_n_choices_stream_with_their_indexes(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    # One token each: the test client buffers only 10 messages of a stream.
    response = await client.post(CHAT, json={
        "model": MODEL, "messages": HELLO, "max_tokens": 1, "temperature": 1.0, "seed": 1,
        "n": 2, "stream": True, "stream_options": {"include_usage": True},
    })  # fmt: skip
    chunks = sse_payloads(await response.get_data())
    whole = await post(client, CHAT, messages=HELLO, max_tokens=1, temperature=1.0, seed=1, n=2)
    for index in (0, 1):
        mine = [
            c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index
        ]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert mine[-1]["finish_reason"] in ("stop", "length")
        assert "".join(c["delta"].get("content", "") for c in mine) == texts(whole)[index]
    assert chunks[-1]["usage"]["completion_tokens"] == whole["usage"]["completion_tokens"]


async def test_penalties_and_logit_bias_change_greedy_output(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    request = {"prompt": "The", "max_tokens": 12, "temperature": 0}
    plain = texts(await post(client, TEXT, **request))[0]
    for knob in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0},
                 {"repetition_penalty": 5.0}):  # fmt: skip
        first = texts(await post(client, TEXT, **request, **knob))[0]
        assert first != plain, knob
        assert texts(await post(client, TEXT, **request, **knob))[0] == first  # reproducible
    # Ban the greedy first token: the output must start otherwise.
    first_token = tiny_app_factory().config["EXOQUIC_NODE"].tokenizer.encode(plain)[0]
    banned = texts(await post(client, TEXT, **request, logit_bias={str(first_token): -100}))[0]
    assert banned != plain


async def test_leaving_a_stream_of_choices_frees_every_cache(tiny_app_factory: Any) -> None:
    """The choices run in tasks of their own: a reader that leaves must end them."""
    app = tiny_app_factory()
    node = app.config["EXOQUIC_NODE"]

    prompt = tuple(node.tokenizer.encode("Hello"))
    generations = [
        GenerationRequest(f"leave-{i}", prompt, SamplingParams(temperature=1.0, seed=i), 50)
        for i in range(3)
    ]
    # The engine is the session's: an earlier test's last release may never have run.
    before = node.engine.active_requests()
    chunks = choice_pieces(Replies(node, generations, None, [None] * len(generations)))
    await anext(chunks)
    assert node.active_requests == 3
    await chunks.aclose()  # what a client disconnect comes down to
    with trio.fail_after(10):  # the worker frees each cache after its step in flight
        while node.engine.active_requests() > before or node.active_requests:
            await trio.sleep(0.05)


async def test_each_of_n_choices_has_its_own_echo_and_logprobs(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    request = {"prompt": "The", "max_tokens": 4, "temperature": 1.0, "logprobs": 1, "echo": True}
    body = await post(client, TEXT, n=2, seed=7, **request)
    singles = [await post(client, TEXT, seed=7 + i, **request) for i in range(2)]
    for choice, single in zip(body["choices"], singles, strict=True):
        assert choice["text"].startswith("The") and choice["text"] == single["choices"][0]["text"]
        assert choice["logprobs"] == single["choices"][0]["logprobs"]  # offsets start afresh
        assert choice["logprobs"]["tokens"][0] == "The"
    chat = await post(client, CHAT, messages=HELLO, max_tokens=3, temperature=1.0, seed=7, n=2,
                      logprobs=True, top_logprobs=1)  # fmt: skip
    for choice in chat["choices"]:
        content = choice["logprobs"]["content"]
        assert "".join(entry["token"] for entry in content) == choice["message"]["content"]
