"""Fuzz what tool calling reads from outside: model output (which a prompt can
steer) through the tool-call parser, and request bodies through the tools and
Ollama validators.

    uv run python fuzz/fuzz_tool_calls.py -atheris_runs=100000
    uv run python fuzz/fuzz_tool_calls.py fuzz/corpus/tool_calls -max_total_time=20

The first byte picks the family and where the text is cut for streaming.
Parsing never raises; the stream shows no text that the whole-text parse
calls a call, and loses none when there is no call. As a JSON body, only
APIError may escape the validators.
"""

from __future__ import annotations

import contextlib
import json
import sys

import atheris

with atheris.instrument_imports():
    from exoquic.api.errors import APIError
    from exoquic.api.ollama_schemas import chat_body
    from exoquic.api.schemas import parse_chat_request
    from exoquic.api.tool_calls import ToolCallStream, ToolFormat, parse_reply

NAMES = frozenset({"get_weather", "f"})
FORMATS = list(ToolFormat)


def check_text(selector: int, text: str) -> None:
    fmt = FORMATS[selector % len(FORMATS)]
    whole = parse_reply(text, fmt, NAMES)
    stream = ToolCallStream(fmt, NAMES)
    step = 1 + selector // len(FORMATS) % 7
    shown = "".join(stream.push(text[i : i + step]) for i in range(0, len(text), step))
    rest = stream.finish()
    if rest.calls:
        if not all(c.name in NAMES for c in rest.calls):
            raise AssertionError("a call to an undeclared function")
    elif shown + (rest.content or "") != text:
        raise AssertionError("the stream lost text")
    if whole.calls and not all(isinstance(c.arguments, dict) for c in whole.calls):
        raise AssertionError("arguments that are not an object")


def check_body(text: str) -> None:
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        return
    for validate in (parse_chat_request, lambda b: parse_chat_request(chat_body(b)[0])):
        with contextlib.suppress(APIError):
            validate(body)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    text = data[1:].decode("utf-8", errors="replace")
    check_text(data[0], text)
    check_body(text)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
