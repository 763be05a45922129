"""Finding tool calls in a model's output, per model family (pure, no I/O).

Each family writes calls its own way:

- Hermes / Qwen (and our fallback prompt): one block per call after any text,
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`.
- Llama 3.x: the whole reply is a JSON object `{"name": ..., "parameters": {...}}`
  (several separated by `;`), optionally after `<|python_tag|>`.
- Mistral: `[TOOL_CALLS]` then a JSON array `[{"name": ..., "arguments": {...}}, ...]`
  (v0.3), or `[TOOL_CALLS]name[ARGS]{...}` per call (newer templates).

A call is kept only if it parses and names a function the request declared;
otherwise the whole reply stays text (a garbled call is text, never an error).
`ToolCallStream` does the same incrementally: it passes text through and holds
back whatever may be the start of a call until the reply ends.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum
from typing import Any

from jinja2 import Environment, TemplateSyntaxError, meta


class ToolFormat(Enum):
    HERMES = "hermes"
    LLAMA3 = "llama3"
    MISTRAL = "mistral"


HERMES_OPEN, HERMES_CLOSE = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
MISTRAL_MARK, MISTRAL_ARGS = "[TOOL_CALLS]", "[ARGS]"


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: a declared function's name and its JSON-object arguments."""

    name: str
    arguments: dict[str, Any]

    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False)


@dataclass(frozen=True)
class ParsedReply:
    """A reply split into its text (None when there is none) and its calls."""

    content: str | None
    calls: tuple[ToolCall, ...]


def tool_format(template: str | None) -> ToolFormat:
    """The call syntax a chat template teaches its model (Hermes when it shows none)."""
    source = template or ""
    if MISTRAL_MARK in source:
        return ToolFormat.MISTRAL
    if PYTHON_TAG in source or "<|eom_id|>" in source or "ipython" in source:
        return ToolFormat.LLAMA3
    return ToolFormat.HERMES


def template_takes_tools(template: str | None) -> bool:
    """Whether the template reads a `tools` variable (else we describe the tools
    ourselves in a system prompt; see `exoquic.api.tool_prompt`)."""
    if not template:
        return False
    try:
        ast = Environment().parse(template)  # parsing runs nothing from the template
    except TemplateSyntaxError:
        return False
    return "tools" in meta.find_undeclared_variables(ast)


def parse_reply(text: str, fmt: ToolFormat, names: Collection[str]) -> ParsedReply:
    """Split a whole reply into text and calls to the functions in `names`."""
    start = call_start(text, fmt)
    if start is None:
        return ParsedReply(text, ())
    calls = _parse_calls(text[start:], fmt, names)
    if not calls:
        return ParsedReply(text, ())
    before = text[:start].strip()
    return ParsedReply(before or None, tuple(calls))


def call_start(text: str, fmt: ToolFormat) -> int | None:
    """Where the first call begins in `text`, or None if no call has begun."""
    if fmt is ToolFormat.LLAMA3:
        stripped = text.lstrip()
        if stripped.startswith((PYTHON_TAG, "{", "[")):
            return len(text) - len(stripped)
        found = text.find(PYTHON_TAG)
        return None if found < 0 else found
    found = text.find(HERMES_OPEN if fmt is ToolFormat.HERMES else MISTRAL_MARK)
    return None if found < 0 else found


def _parse_calls(text: str, fmt: ToolFormat, names: Collection[str]) -> list[ToolCall] | None:
    if fmt is ToolFormat.HERMES:
        objects = _hermes_objects(text)
    elif fmt is ToolFormat.LLAMA3:
        objects = _json_sequence(text.strip().removeprefix(PYTHON_TAG), separators=";")
    else:
        objects = _mistral_objects(text)
    if not objects:
        return None
    calls = [_call(obj, names) for obj in objects]
    if any(call is None for call in calls):
        return None
    return [call for call in calls if call is not None]


def _hermes_objects(text: str) -> list[Any] | None:
    """The JSON inside each `<tool_call>` block; the last may lack its closing tag
    (the model ended its turn right after the JSON)."""
    objects: list[Any] = []
    rest = text
    while rest.strip():
        if not rest.lstrip().startswith(HERMES_OPEN):
            return None
        body = rest.lstrip()[len(HERMES_OPEN) :]
        inside, closed, rest = body.partition(HERMES_CLOSE)
        parsed = _json_sequence(inside, separators="")
        if parsed is None or len(parsed) != 1 or (not closed and rest):
            return None
        objects.append(parsed[0])
    return objects


def _mistral_objects(text: str) -> list[Any] | None:
    objects: list[Any] = []
    for part in text.split(MISTRAL_MARK)[1:]:
        part = part.strip()
        if MISTRAL_ARGS in part and not part.startswith("["):
            name, _, arguments = part.partition(MISTRAL_ARGS)
            name = name.partition("[CALL_ID]")[0]
            parsed = _json_sequence(arguments, separators="")
            if parsed is None or len(parsed) != 1:
                return None
            objects.append({"name": name.strip(), "arguments": parsed[0]})
            continue
        parsed = _json_sequence(part, separators="")
        if parsed is None or len(parsed) != 1 or not isinstance(parsed[0], list):
            return None
        objects.extend(parsed[0])
    return objects


def _json_sequence(text: str, separators: str) -> list[Any] | None:
    """The JSON values that make up all of `text` (whitespace and `separators`
    between them), or None if anything else is there. A top-level array is
    spread into its items."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    position, end = 0, len(text)
    while True:
        while position < end and (text[position].isspace() or text[position] in separators):
            position += 1
        if position == end:
            return values or None
        try:
            value, position = decoder.raw_decode(text, position)
        except (ValueError, RecursionError):
            return None
        values.extend(value if isinstance(value, list) and separators else [value])


def _call(obj: Any, names: Collection[str]) -> ToolCall | None:
    """A call from `{"name", "arguments" | "parameters"}`, or OpenAI's
    `{"type": "function", "function": {...}}` which some models copy."""
    if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
        obj = obj["function"]
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or name not in names:  # a dict name is unhashable
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return ToolCall(name, arguments)


def _markers(fmt: ToolFormat) -> tuple[str, ...]:
    if fmt is ToolFormat.HERMES:
        return (HERMES_OPEN,)
    if fmt is ToolFormat.MISTRAL:
        return (MISTRAL_MARK,)
    return (PYTHON_TAG,)


class ToolCallStream:
    """Streams a reply's text while holding back any tool call until it ends.

    `push(piece)` returns the text that is safe to show now; once a call may
    have begun, everything is held. `finish()` returns the held text that turned
    out not to be a call, and the calls. `prefix` is text the prompt already
    wrote for the model (a forced call's opening, see `exoquic.api.tools`).
    Work per piece is bounded by what is held, not by the reply's length.
    """

    def __init__(self, fmt: ToolFormat, names: Collection[str], prefix: str = "") -> None:
        self.fmt = fmt
        self.names = frozenset(names)
        self._held = prefix
        self._capturing = bool(prefix)
        # Llama writes a call as the whole reply: until its first visible
        # character, the reply may still turn out to be one.
        self._may_open_with_json = fmt is ToolFormat.LLAMA3

    def push(self, piece: str) -> str:
        self._held += piece
        if self._capturing:
            return ""
        if self._may_open_with_json:
            first = self._held.lstrip()[:1]
            if not first:
                return ""
            self._may_open_with_json = False
            if first in "{[":
                self._capturing = True
                return ""
        # A marker is never split between shown and held text, so searching
        # what is held finds the first one.
        markers = _markers(self.fmt)
        starts = [i for i in (self._held.find(m) for m in markers) if i >= 0]
        if starts:
            self._capturing = True
            return self._release(min(starts))
        return self._release(len(self._held) - _partial_marker(self._held, markers))

    def _release(self, count: int) -> str:
        out, self._held = self._held[:count], self._held[count:]
        return out

    @property
    def capturing(self) -> bool:
        """Whether a call has begun (everything since is held back)."""
        return self._capturing

    def call_complete(self) -> bool:
        """Whether the held text is already one whole, valid call (a forced call
        may end generation here instead of waiting for the model to stop)."""
        return self._capturing and _parse_calls(self._held, self.fmt, self.names) is not None

    def finish(self) -> ParsedReply:
        """The rest of the reply: held text that is no call, and the calls."""
        held, self._held = self._held, ""
        if self._capturing:
            calls = _parse_calls(held, self.fmt, self.names)
            if calls:
                return ParsedReply(None, tuple(calls))
        return ParsedReply(held or None, ())


def _partial_marker(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that begins one of `markers`."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if marker.startswith(text[-size:]):
                longest = size
                break
    return longest


def call_id(request_id: str, index: int) -> str:
    """A stable id for the `index`-th call of a request: 9 letters and digits,
    the only form Mistral's templates accept back (others take any string)."""
    return hashlib.sha256(f"{request_id}/{index}".encode()).hexdigest()[:9]
