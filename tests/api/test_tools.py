"""Tool requests: validation, the prompt (native template or Hermes fallback),
forced-call steering, and tool calls taken out of a generation's chunks."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest

from exoquic.api.errors import APIError
from exoquic.api.schemas import parse_chat_request
from exoquic.api.tool_calls import ToolCall, ToolFormat, call_id
from exoquic.api.tools import ToolCalling, forced_prefix, parse_tools, reply_pieces
from exoquic.engines.logprobs import TokenLogprob
from exoquic.models.chat_template import render_chat
from exoquic.orchestration.generation import GenerationChunk

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}
CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}  # fmt: skip
LOOP = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None, "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"},
]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}<|im_start|>assistant\n"
)
# The tool parts of Qwen2.5's template, which reads `tools` and objects as arguments.
QWEN_LIKE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function.name }} "
    "{{ c.function.arguments.city }}</tool_call>{% endfor %}<|im_end|>\n{% endfor %}"
)


def chat(**fields: Any) -> Any:
    return parse_chat_request({"model": "m", "messages": LOOP, **fields})


def test_parse_tools_and_choices() -> None:
    assert parse_tools({}) is None
    request = parse_tools({"tools": [WEATHER, TIME], "tool_choice": "required"})
    assert request is not None and request.names == {"get_weather", "get_time"}
    assert request.forced == ""  # some function, the model picks which
    named = {"type": "function", "function": {"name": "get_time"}}
    assert parse_tools({"tools": [WEATHER, TIME], "tool_choice": named}).forced == "get_time"  # type: ignore[union-attr]
    assert parse_tools({"tools": [WEATHER], "tool_choice": "required"}).forced == "get_weather"  # type: ignore[union-attr]
    off = parse_tools({"tools": [WEATHER], "tool_choice": "none"})
    assert off is not None and not off.active and off.forced is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0]"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
        ),
        ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ],
)
def test_bad_tools_name_the_parameter(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(APIError) as info:
        chat(**fields)
    assert info.value.status == 400 and info.value.param == param


def test_tool_messages_are_validated() -> None:
    messages = chat(tools=[WEATHER]).messages
    assert messages[1] == {"role": "assistant", "content": "", "tool_calls": [CALL]}
    assert messages[2] == {"role": "tool", "content": "Sunny", "tool_call_id": "call_1"}
    with pytest.raises(APIError) as info:
        parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x",
                                                         "tool_call_id": "1"}]})  # fmt: skip
    assert info.value.param == "messages[0].tool_call_id"


def test_fallback_renders_tools_calls_and_results_in_hermes_style() -> None:
    request = chat(tools=[WEATHER])
    calling = ToolCalling.for_template(request.tools, CHATML)
    assert not calling.native and calling.fmt is ToolFormat.HERMES
    messages, tools = calling.render(list(request.messages))
    assert tools is None
    text = render_chat(CHATML, messages)
    assert text.startswith("<|im_start|>system\nYou are a function calling AI model.")
    assert json.dumps(WEATHER) in text
    assert (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    )
    assert "<|im_start|>user\n<tool_response>\nSunny\n</tool_response><|im_end|>" in text


def test_native_template_gets_tools_and_object_arguments() -> None:
    request = chat(tools=[WEATHER])
    calling = ToolCalling.for_template(request.tools, QWEN_LIKE)
    assert calling.native
    messages, tools = calling.render(list(request.messages))
    text = render_chat(QWEN_LIKE, messages, tools=tools)
    assert text.startswith('<tools>{"type": "function", "function": {"name": "get_weather"')
    assert "<tool_call>get_weather Paris</tool_call>" in text
    assert "<|im_start|>tool\nSunny" in text


def test_tool_choice_none_describes_no_tools() -> None:
    request = chat(tools=[WEATHER], tool_choice="none")
    _, tools = ToolCalling.for_template(request.tools, QWEN_LIKE).render(list(request.messages))
    assert tools is None
    fallback, _ = ToolCalling.for_template(request.tools, CHATML).render(list(request.messages))
    assert fallback[0]["role"] == "user"  # no tool system prompt


def test_forced_prefix_per_family() -> None:
    named = parse_tools({"tools": [WEATHER, TIME], "tool_choice": {"type": "function",
                         "function": {"name": "get_weather"}}})  # fmt: skip
    assert forced_prefix(named, ToolFormat.HERMES) == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "'
    )
    assert (
        forced_prefix(named, ToolFormat.LLAMA3)
        == '{"name": "get_weather", "parameters": {"city": "'
    )
    any_call = parse_tools({"tools": [WEATHER, TIME], "tool_choice": "required"})
    assert forced_prefix(any_call, ToolFormat.MISTRAL) == '[TOOL_CALLS][{"name": "'
    assert forced_prefix(parse_tools({"tools": [WEATHER]}), ToolFormat.HERMES) == ""


async def chunks_of(
    texts: list[str], finish: str = "stop"
) -> AsyncGenerator[GenerationChunk, None]:
    for i, text in enumerate(texts):
        yield GenerationChunk(text, i + 1, finish if i == len(texts) - 1 else None)


async def pieces(texts: list[str], calling: ToolCalling) -> list[Any]:
    return [p async for p in reply_pieces(chunks_of(texts), calling)]


async def test_reply_pieces_hold_back_calls_and_finish_with_tool_calls() -> None:
    calling = ToolCalling.for_template(parse_tools({"tools": [WEATHER]}), CHATML)
    texts = ["Checking", " <tool", '_call>{"name": "get_weather", ', '"arguments": {}}', ""]
    got = await pieces(texts, calling)
    assert "".join(p.text for p in got) == "Checking "
    assert got[-1].finish_reason == "tool_calls"
    assert got[-1].calls == (ToolCall("get_weather", {}),)


async def test_reply_pieces_keep_every_log_probability_in_order() -> None:
    """Log-probabilities of held-back text (a possible call) come with a later
    piece: none is lost or repeated, with or without tools."""
    texts = ["Checking", " <tool", '_call>{"name": "get_weather", ', '"arguments": {}}', ""]

    async def scored_chunks() -> AsyncGenerator[GenerationChunk, None]:
        for i, text in enumerate(texts):
            finish = "stop" if i == len(texts) - 1 else None
            yield GenerationChunk(text, i + 1, finish, logprobs=(TokenLogprob(i, -0.5 * i),))

    for calling in (None, ToolCalling.for_template(parse_tools({"tools": [WEATHER]}), CHATML)):
        got = [p async for p in reply_pieces(scored_chunks(), calling)]
        assert [lp.token_id for p in got for lp in p.logprobs] == list(range(len(texts)))


async def test_forced_call_ends_the_reply_once_whole() -> None:
    calling = ToolCalling.for_template(
        parse_tools({"tools": [WEATHER], "tool_choice": "required"}), CHATML
    )
    got = await pieces(['Paris"}}', "\n</tool_call> and more rambling", " ..."], calling)
    assert len(got) == 1 and got[0].text == "" and got[0].token_count == 1
    assert got[0].calls == (ToolCall("get_weather", {"city": "Paris"}),)


async def test_garbled_forced_call_comes_back_as_text() -> None:
    calling = ToolCalling.for_template(
        parse_tools({"tools": [WEATHER], "tool_choice": "required"}), CHATML
    )
    got = await pieces(["Par", "is, sunny"], calling)
    assert got[-1].finish_reason == "stop" and got[-1].calls == ()
    assert "".join(p.text for p in got) == calling.prefix + "Paris, sunny"


# Gemma's way: no system role at all.
NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "<turn>{{ m['role'] }}\n{{ m['content'] }}</turn>\n{% endfor %}<turn>assistant\n"
)


def test_fallback_without_a_system_role_puts_the_tools_in_the_first_user_turn() -> None:
    request = chat(tools=[WEATHER])
    calling = ToolCalling.for_template(request.tools, NO_SYSTEM)
    assert not calling.system_role
    messages, _ = calling.render(list(request.messages))
    text = render_chat(NO_SYSTEM, messages)  # renders: no system message
    assert text.startswith("<turn>user\nYou are a function calling AI model.")
    assert "</tool_call>\n\nWeather in Paris?</turn>" in text


def test_call_ids_suit_every_template() -> None:
    ids = {call_id("0123456789abcdef0123456789abcdef", i) for i in range(3)}
    assert len(ids) == 3 and all(len(i) == 9 and i.isalnum() for i in ids)
