"""A tool-calling conversation through each family's real chat template
(tests/models/chat_templates.py): the template, or our Hermes fallback where it
has no tool support, renders the tools, the assistant's call and the result,
in the syntax the family's parser then reads (exoquic.api.tools, tool_calls)."""

from __future__ import annotations

from typing import Any

import pytest
from chat_templates import FAMILIES

from exoquic.api.schemas import parse_chat_request
from exoquic.api.tool_calls import ToolFormat, call_id, parse_reply
from exoquic.api.tools import ToolCalling
from exoquic.models.chat_template import render_chat

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CALL_ID = call_id("0123456789abcdef", 0)  # the ids we hand out
LOOP: list[Any] = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [{"id": CALL_ID, "type": "function",
     "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": CALL_ID, "content": "Sunny"},
]  # fmt: skip
# What each family's template does with tools, and how its calls look.
EXPECTED = {
    "llama-3": (
        ToolFormat.LLAMA3,
        True,
        '{"name": "get_weather", "parameters": {"city": "Paris"}}',
    ),
    "qwen2.5": (ToolFormat.HERMES, True, '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
    "qwen3": (ToolFormat.HERMES, True, '{"name": "get_weather", "arguments": {"city": "Paris"}}'),
    "mistral-v0.3": (ToolFormat.MISTRAL, True, '[TOOL_CALLS] [{"name": "get_weather"'),
    "phi-3.5": (
        ToolFormat.HERMES,
        False,
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    ),
    "gemma-2": (
        ToolFormat.HERMES,
        False,
        '{"name": "get_weather", "arguments": {"city": "Paris"}}',
    ),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_tool_loop_renders_in_the_familys_syntax(family: str) -> None:
    spec = FAMILIES[family]
    fmt, native, written_call = EXPECTED[family]
    request = parse_chat_request({"model": "m", "messages": LOOP, "tools": [WEATHER]})
    calling = ToolCalling.for_template(request.tools, spec.template)
    assert (calling.fmt, calling.native) == (fmt, native)
    messages, tools = calling.render(list(request.messages))
    text = render_chat(spec.template, messages, tools=tools,
                       bos_token=spec.bos_token, eos_token=spec.eos_token)  # fmt: skip
    assert "get_weather" in text.split("Weather in Paris?")[0]  # the tools come first
    assert written_call in text
    assert "Sunny" in text.split(written_call)[1]  # the result follows the call


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_forced_call_opening_parses_once_the_model_closes_it(family: str) -> None:
    spec = FAMILIES[family]
    forced = {"type": "function", "function": {"name": "get_weather"}}
    request = parse_chat_request(
        {"model": "m", "messages": LOOP[:1], "tools": [WEATHER], "tool_choice": forced}
    )
    calling = ToolCalling.for_template(request.tools, spec.template)
    closing = {ToolFormat.MISTRAL: 'Paris"}}]'}.get(calling.fmt, 'Paris"}}')
    reply = parse_reply(calling.prefix + closing, calling.fmt, {"get_weather"})
    assert [(c.name, c.arguments) for c in reply.calls] == [("get_weather", {"city": "Paris"})]
