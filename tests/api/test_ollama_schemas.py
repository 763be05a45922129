"""Ollama's bodies mapped onto the OpenAI ones, and its reply fields (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from exoquic.api.errors import APIError
from exoquic.api.ollama_schemas import Timings, chat_body, generate_body, parameter_size
from exoquic.api.schemas import parse_chat_request

HELLO = [{"role": "user", "content": "Hi"}]


def test_options_map_onto_openai_fields() -> None:
    options = {"temperature": 0.2, "top_p": 0.9, "top_k": 40, "seed": 7, "num_predict": 12,
               "stop": ["\n"], "num_ctx": 4096, "num_thread": 8}  # fmt: skip
    body, stream = chat_body({"model": "smollm2:latest", "messages": HELLO, "options": options})
    assert stream  # Ollama streams unless told not to
    assert body == {"model": "smollm2", "messages": HELLO, "temperature": 0.2, "top_p": 0.9,
                    "top_k": 40, "seed": 7, "stop": ["\n"], "max_tokens": 12}  # fmt: skip
    params = parse_chat_request(body).params
    assert (params.max_tokens, params.sampling.seed, params.stop) == (12, 7, ("\n",))
    forever, _ = chat_body({"model": "m", "messages": HELLO, "options": {"num_predict": -1}})
    assert "max_tokens" not in forever


def test_penalties_min_p_and_format_reach_the_sampler() -> None:
    options = {"repeat_penalty": 1.3, "presence_penalty": 0.5, "frequency_penalty": -0.5,
               "min_p": 0.05}  # fmt: skip
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    for format_ in ("json", schema):
        body, _ = chat_body({"model": "m", "messages": HELLO, "options": options,
                             "format": format_})  # fmt: skip
        sampling = parse_chat_request(body).params.sampling
        assert (sampling.repetition_penalty, sampling.presence_penalty) == (1.3, 0.5)
        assert (sampling.frequency_penalty, sampling.min_p) == (-0.5, 0.05)
        assert sampling.grammar is not None
    body, _ = chat_body({"model": "m", "messages": HELLO, "options": {"repeat_penalty": 0}})
    with pytest.raises(APIError) as refused:  # Ollama's "off" would be 1; 0 is out of range
        parse_chat_request(body)
    assert refused.value.param == "repetition_penalty"


def test_tool_messages_and_format() -> None:
    messages = [
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "f", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "42", "tool_name": "f"},
    ]  # fmt: skip
    body, _ = chat_body({"model": "m", "messages": messages, "format": "json", "stream": False})
    assert body["messages"][1] == {"role": "tool", "content": "42", "name": "f"}
    assert body["response_format"] == {"type": "json_object"}
    calls = parse_chat_request({**body, "response_format": None}).messages[0]["tool_calls"]
    assert calls[0]["function"] == {"name": "f", "arguments": '{"a": 1}'}


def test_generate_body() -> None:
    asked = generate_body({"model": "m", "prompt": "Hi", "system": "Be brief.", "stream": False})
    assert not asked.stream and not asked.raw
    assert asked.chat_body["messages"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}
    ]  # fmt: skip
    assert generate_body({"model": "m", "prompt": "Hi", "raw": True}).raw


@pytest.mark.parametrize(
    "body",
    [
        {"messages": HELLO},
        {"model": "m", "messages": "Hi"},
        {"model": "m", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
        {"model": "m", "messages": HELLO, "options": [1]},
        {"model": "m", "messages": HELLO, "format": "yaml"},
        {"model": "m", "messages": HELLO, "stream": "yes"},
        {"model": "m", "messages": HELLO, "temperature": 1},
    ],
)
def test_bad_chat_bodies_are_400(body: Any) -> None:
    with pytest.raises(APIError) as info:
        chat_body(body)
    assert info.value.status == 400


@pytest.mark.parametrize("field", ["suffix", "template", "context", "images"])
def test_generate_refuses_what_it_cannot_honour(field: str) -> None:
    with pytest.raises(APIError) as info:
        generate_body({"model": "m", "prompt": "x", field: [1]})
    assert info.value.param == field


def test_timings_in_nanoseconds() -> None:
    timings = Timings(10.0, 10.5, 12.0, prompt_tokens=30, completion_tokens=20).as_dict()
    assert timings == {"total_duration": 2_000_000_000, "load_duration": 0,
                       "prompt_eval_count": 30, "prompt_eval_duration": 500_000_000,
                       "eval_count": 20, "eval_duration": 1_500_000_000}  # fmt: skip
    assert parameter_size(134_515_008) == "135M" and parameter_size(8_030_261_248) == "8.0B"
