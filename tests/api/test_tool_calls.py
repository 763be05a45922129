"""The tool-call parser: fixed text per model family, and properties (hypothesis)."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exoquic.api.tool_calls import (
    ParsedReply,
    ToolCall,
    ToolCallStream,
    ToolFormat,
    parse_reply,
    template_takes_tools,
    tool_format,
)

NAMES = {"get_weather", "get_time"}
WEATHER = ToolCall("get_weather", {"city": "Paris"})
TIME = ToolCall("get_time", {"zone": "UTC", "precise": True})


@pytest.mark.parametrize(
    ("fmt", "text", "expected"),
    [
        (
            ToolFormat.HERMES,
            'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
            "\n</tool_call>",
            ParsedReply("Let me look.", (WEATHER,)),
        ),
        (  # Qwen2.5 writes parallel calls as consecutive blocks
            ToolFormat.HERMES,
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC", "precise": true}}\n'
            "</tool_call>",
            ParsedReply(None, (WEATHER, TIME)),
        ),
        (  # the model ended its turn before the closing tag
            ToolFormat.HERMES,
            '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}',
            ParsedReply(None, (WEATHER,)),
        ),
        (
            ToolFormat.LLAMA3,
            '{"name": "get_weather", "parameters": {"city": "Paris"}}',
            ParsedReply(None, (WEATHER,)),
        ),
        (
            ToolFormat.LLAMA3,
            '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}; '
            '{"name": "get_time", "parameters": {"zone": "UTC", "precise": true}}',
            ParsedReply(None, (WEATHER, TIME)),
        ),
        (
            ToolFormat.MISTRAL,
            '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
            '{"name": "get_time", "arguments": {"zone": "UTC", "precise": true}}]',
            ParsedReply(None, (WEATHER, TIME)),
        ),
        (  # Mistral's newer templates: name[ARGS]{...} per call
            ToolFormat.MISTRAL,
            '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
            ParsedReply(None, (WEATHER,)),
        ),
    ],
)
def test_each_family_parses(fmt: ToolFormat, text: str, expected: ParsedReply) -> None:
    assert parse_reply(text, fmt, NAMES) == expected


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        (
            ToolFormat.HERMES,
            '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>',
        ),
        (ToolFormat.HERMES, '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'),
        (ToolFormat.HERMES, '<tool_call>{"name": "get_weather", "arguments": [1]}</tool_call>'),
        (ToolFormat.HERMES, '<tool_call>{"name": "get_time"}</tool_call> and then some prose'),
        (ToolFormat.LLAMA3, '{"name": "Bob", "age": 3}'),
        (ToolFormat.LLAMA3, '{"name": "get_weather", "parameters": {"city": "Paris"}} Sunny!'),
        (ToolFormat.MISTRAL, "[TOOL_CALLS] not json at all"),
        (ToolFormat.MISTRAL, '[TOOL_CALLS][{"name": {}}]'),  # found by fuzz_tool_calls
        (ToolFormat.HERMES, '<tool_call>{"name": ["get_time"]}</tool_call>'),
        (ToolFormat.HERMES, "Just an answer, no call."),
    ],
)
def test_garbled_or_unknown_calls_stay_text(fmt: ToolFormat, text: str) -> None:
    assert parse_reply(text, fmt, NAMES) == ParsedReply(text, ())


def test_template_detection() -> None:
    qwen = "{% if tools %}<tools>{{ tools | tojson }}</tools>{% endif %}<tool_call>"
    llama = "{% if tools is not none %}<|python_tag|>{% endif %}<|eot_id|>"
    mistral = "{% if tools is defined %}[AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]"
    assert tool_format(qwen) is ToolFormat.HERMES and template_takes_tools(qwen)
    assert tool_format(llama) is ToolFormat.LLAMA3 and template_takes_tools(llama)
    assert tool_format(mistral) is ToolFormat.MISTRAL and template_takes_tools(mistral)
    chatml = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert tool_format(chatml) is ToolFormat.HERMES and not template_takes_tools(chatml)
    assert not template_takes_tools(None) and not template_takes_tools("{% if %}")


# --- properties --------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
ARGUMENTS = st.dictionaries(
    st.text(max_size=6),
    st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3), max_leaves=6),
    max_size=4,
)
CALLS = st.lists(st.builds(ToolCall, st.sampled_from(sorted(NAMES)), ARGUMENTS), min_size=1)
# Prose that cannot itself open a call in any family.
PROSE = st.text(alphabet=st.characters(blacklist_characters="<[{"), max_size=40)


def render(calls: list[ToolCall], fmt: ToolFormat) -> str:
    """Calls written the way each family's models write them."""
    if fmt is ToolFormat.HERMES:
        objs = [{"name": c.name, "arguments": c.arguments} for c in calls]
        return "\n".join(f"<tool_call>\n{json.dumps(o)}\n</tool_call>" for o in objs)
    if fmt is ToolFormat.LLAMA3:
        return "; ".join(json.dumps({"name": c.name, "parameters": c.arguments}) for c in calls)
    return "[TOOL_CALLS]" + json.dumps([{"name": c.name, "arguments": c.arguments} for c in calls])


def stream_through(text: str, cuts: list[int], fmt: ToolFormat) -> tuple[str, ParsedReply]:
    """`text` pushed through a ToolCallStream in pieces cut at `cuts`."""
    stream = ToolCallStream(fmt, NAMES)
    bounds = sorted({0, len(text), *(c % (len(text) + 1) for c in cuts)})
    shown = "".join(stream.push(text[a:b]) for a, b in itertools.pairwise(bounds))
    return shown, stream.finish()


@given(CALLS, st.sampled_from(list(ToolFormat)))
def test_written_calls_parse_back(calls: list[ToolCall], fmt: ToolFormat) -> None:
    assert parse_reply(render(calls, fmt), fmt, NAMES) == ParsedReply(None, tuple(calls))


@given(PROSE, CALLS, st.lists(st.integers(min_value=0), max_size=8))
def test_streaming_shows_the_prose_and_finds_the_calls(
    prose: str, calls: list[ToolCall], cuts: list[int]
) -> None:
    fmt = ToolFormat.HERMES
    shown, rest = stream_through(prose + render(calls, fmt), cuts, fmt)
    assert shown == prose  # nothing of a call is ever shown as text
    assert rest == ParsedReply(None, tuple(calls))


@given(
    st.text(max_size=60),
    st.lists(st.integers(min_value=0), max_size=8),
    st.sampled_from(list(ToolFormat)),
)
def test_streaming_loses_no_text(text: str, cuts: list[int], fmt: ToolFormat) -> None:
    shown, rest = stream_through(text, cuts, fmt)
    whole = parse_reply(text, fmt, NAMES)
    if rest.calls:
        assert rest.calls == whole.calls
    else:
        assert shown + (rest.content or "") == text  # no calls: every character comes back


@given(st.text(max_size=200), st.sampled_from(list(ToolFormat)))
def test_any_text_parses_without_error(text: str, fmt: ToolFormat) -> None:
    reply = parse_reply(text, fmt, NAMES)
    assert reply.calls or reply.content == text
    assert all(c.name in NAMES and isinstance(c.arguments, dict) for c in reply.calls)
