"""Ollama's routes in process (the real app on the tiny random model): NDJSON
framing, counters and Ollama's error shape."""

from __future__ import annotations

import json
from typing import Any

from exoquic.api.security import ApiSecurity
from exoquic.models.registry import DEFAULT_MODEL_ID

HELLO = [{"role": "user", "content": "Hello"}]


async def test_chat_stream_is_ndjson_ending_in_one_done_line(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    body = {"model": DEFAULT_MODEL_ID, "messages": HELLO, "options": {"num_predict": 4}}
    response = await client.post("/api/chat", json=body)
    assert response.status_code == 200
    assert response.content_type == "application/x-ndjson"
    raw = (await response.get_data()).decode()
    assert raw.endswith("\n")
    lines = [json.loads(line) for line in raw.splitlines()]
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    last = lines[-1]
    assert last["message"] == {"role": "assistant", "content": ""}
    assert last["done_reason"] in ("stop", "length") and 0 < last["eval_count"] <= 4
    assert last["prompt_eval_count"] > 0 and last["total_duration"] >= last["eval_duration"]
    assert all(line["model"] == DEFAULT_MODEL_ID for line in lines)


async def test_generate_whole_reply(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    body = {"model": DEFAULT_MODEL_ID, "prompt": "The", "raw": True, "stream": False,
            "options": {"num_predict": 3, "temperature": 0}}  # fmt: skip
    first = await (await client.post("/api/generate", json=body)).get_json()
    again = await (await client.post("/api/generate", json=body)).get_json()
    assert first["done"] and first["response"] == again["response"]
    assert first["prompt_eval_count"] == 1  # "The" is one token, no template
    assert first["eval_count"] <= 3


async def test_format_schema_gives_valid_json_from_a_random_model(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}  # fmt: skip
    options = {"num_predict": 20, "temperature": 1.0, "seed": 3, "repeat_penalty": 1.2}
    body = {"model": DEFAULT_MODEL_ID, "messages": HELLO, "format": schema, "stream": False,
            "options": options}  # fmt: skip
    reply = await (await client.post("/api/chat", json=body)).get_json()
    assert reply["done_reason"] == "stop"
    assert isinstance(json.loads(reply["message"]["content"])["ok"], bool)
    raw = {"model": DEFAULT_MODEL_ID, "prompt": "The", "raw": True, "format": schema,
           "stream": False, "options": options}  # fmt: skip
    reply = await (await client.post("/api/generate", json=raw)).get_json()
    assert reply["done_reason"] == "stop"
    assert isinstance(json.loads(reply["response"])["ok"], bool)


async def test_errors_are_ollama_shaped(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    bad = await client.post("/api/chat", json={"model": DEFAULT_MODEL_ID, "messages": "Hi"})
    assert bad.status_code == 400 and set(await bad.get_json()) == {"error"}
    missing = await client.post("/api/chat", json={"model": "nope", "messages": HELLO})
    assert missing.status_code == 404 and "nope" in (await missing.get_json())["error"]
    unknown = await client.post("/api/push")  # an Ollama route this node does not have
    assert unknown.status_code == 404 and isinstance((await unknown.get_json())["error"], str)
    keyed = tiny_app_factory(ApiSecurity(api_key="k")).test_client()
    refused = await keyed.get("/api/tags")
    assert refused.status_code == 401 and "API key" in (await refused.get_json())["error"]
    # The OpenAI routes keep OpenAI's shape.
    openai = await keyed.get("/v1/models")
    assert set((await openai.get_json())["error"]) == {"message", "type", "param", "code"}


async def test_logprobs_in_ollamas_shape(tiny_app_factory: Any) -> None:
    """Top-level `logprobs`/`top_logprobs` (Ollama 0.12.11+): each line carries
    its tokens' entries, whole replies all of them; raw generate too; a bad
    value is an Ollama-shaped 400."""
    client = tiny_app_factory().test_client()
    chat = {"model": DEFAULT_MODEL_ID, "messages": HELLO, "logprobs": True, "top_logprobs": 2,
            "options": {"num_predict": 4, "temperature": 0}}  # fmt: skip
    raw = (await (await client.post("/api/chat", json=chat)).get_data()).decode()
    lines = [json.loads(line) for line in raw.splitlines()]
    entries = [e for line in lines for e in line.get("logprobs", [])]
    assert len(entries) == lines[-1]["eval_count"]
    text = "".join(line["message"]["content"] for line in lines)
    assert bytes(b for e in entries for b in e["bytes"]).decode() == text
    for entry in entries:
        best = entry["top_logprobs"][0]
        assert len(entry["top_logprobs"]) == 2 and entry["logprob"] <= 0
        assert (best["token"], best["logprob"]) == (entry["token"], entry["logprob"])
    whole = await (await client.post("/api/chat", json={**chat, "stream": False})).get_json()
    assert whole["logprobs"] == entries
    generate = {"model": DEFAULT_MODEL_ID, "prompt": "The", "raw": True, "stream": False,
                "logprobs": True, "options": {"num_predict": 3, "temperature": 0}}  # fmt: skip
    reply = await (await client.post("/api/generate", json=generate)).get_json()
    assert len(reply["logprobs"]) == reply["eval_count"]
    assert all(e["top_logprobs"] == [] for e in reply["logprobs"])
    unscored = {**chat, "logprobs": False, "top_logprobs": None, "stream": False}
    plain = await (await client.post("/api/chat", json=unscored)).get_json()
    assert "logprobs" not in plain
    bad = await client.post("/api/chat", json={**chat, "top_logprobs": 21})
    assert bad.status_code == 400 and "top_logprobs" in (await bad.get_json())["error"]
