"""Tool calling with the official `openai` client against a real `exoquic up` node.

The bundled SmolLM2-135M rarely writes a valid call by itself, so the loop
forces one with `tool_choice` (steered: see exoquic.api.tools.forced_prefix);
the call must come back parsed, in OpenAI's shape, and the model must then
answer from the tool's result.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_helpers import RunningNode
from openai import OpenAI

from exoquic.models.registry import DEFAULT_MODEL_ID

pytestmark = pytest.mark.slow

WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
RESULT = "Sunny and 25 degrees Celsius."


@pytest.fixture
def client(api_node: RunningNode) -> OpenAI:
    return OpenAI(base_url=f"{api_node.url}/v1", api_key=api_node.api_key, max_retries=0)


def answer_turns(call_id: str, name: str, arguments: str) -> list[Any]:
    """The conversation after the call: the assistant's call, then its result."""
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return [
        *QUESTION,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": RESULT},
    ]


def test_two_step_tool_loop(client: OpenAI, api_node: RunningNode) -> None:
    first = client.chat.completions.create(
        model=DEFAULT_MODEL_ID,
        messages=QUESTION,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=40,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert len(calls) == 1 and calls[0].type == "function"
    call = calls[0]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    second = client.chat.completions.create(
        model=DEFAULT_MODEL_ID,
        messages=answer_turns(call.id, "get_weather", call.function.arguments),  # type: ignore[union-attr]
        tools=[WEATHER_TOOL, TIME_TOOL],
        temperature=0,
        max_tokens=30,
    )
    answer = second.choices[0]
    assert answer.finish_reason in ("stop", "length")
    assert answer.message.tool_calls is None
    assert "25" in (answer.message.content or "")  # the tool's result reached the model
    api_node.wait_idle(timeout=10)


def test_two_step_tool_loop_streaming(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=DEFAULT_MODEL_ID,
        messages=QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice="required",  # one tool: the model must call it
        temperature=0,
        max_tokens=40,
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert text == ""  # the call's text is never shown as content
    assert [c.choices[0].finish_reason for c in chunks][-1] == "tool_calls"
    assert len(deltas) == 1 and deltas[0].index == 0 and deltas[0].id
    function = deltas[0].function
    assert function is not None and function.name == "get_weather"
    assert json.loads(function.arguments or "") == {"city": "Paris"}
    answer = client.chat.completions.create(
        model=DEFAULT_MODEL_ID,
        messages=answer_turns(deltas[0].id, "get_weather", function.arguments or ""),
        tools=[WEATHER_TOOL],
        temperature=0,
        max_tokens=30,
        stream=True,
    )
    pieces = [c.choices[0] for c in answer if c.choices]
    assert "25" in "".join(p.delta.content or "" for p in pieces)
    assert pieces[-1].finish_reason in ("stop", "length")
    assert not any(p.delta.tool_calls for p in pieces)


def test_tool_choice_none_answers_in_text(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=DEFAULT_MODEL_ID,
        messages=QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice="none",
        temperature=0,
        max_tokens=8,
    )
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].message.content


def test_every_choice_of_n_gets_its_call(client: OpenAI) -> None:
    """n > 1 with tools: each choice's reply is read for calls on its own."""
    reply = client.chat.completions.create(
        model=DEFAULT_MODEL_ID,
        messages=QUESTION,
        tools=[WEATHER_TOOL],
        tool_choice="required",
        temperature=0,
        max_tokens=40,
        n=2,
    )
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        [call] = choice.message.tool_calls or []
        assert call.function.name == "get_weather"  # type: ignore[union-attr]
        assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    ids = [(c.message.tool_calls or [])[0].id for c in reply.choices]
    assert ids[0] != ids[1]
