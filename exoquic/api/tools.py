"""Tool calling: validating `tools` and `tool_choice`, and preparing the prompt (pure).

A model whose chat template reads `tools` gets them, and the conversation's
assistant `tool_calls` and `tool` results, through its own template (the
Hugging Face conventions: arguments as objects). A template without tool
support gets the fallback: a Hermes-style system prompt describing the tools,
assistant calls written as `<tool_call>` blocks and results as user turns of
`<tool_response>` blocks (see docs/api.md, Tool calls).

`tool_choice` "required" or a named function is enforced by steering: the
prompt ends with the opening of a call in the model's own syntax, so the model
can only continue it (see `forced_prefix`).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from exoquic.api.errors import invalid
from exoquic.api.tool_calls import (
    HERMES_CLOSE,
    HERMES_OPEN,
    ToolCall,
    ToolCallStream,
    ToolFormat,
    template_takes_tools,
    tool_format,
)
from exoquic.engines.logprobs import TokenLogprob
from exoquic.models.chat_template import render_chat
from exoquic.models.errors import ChatTemplateError
from exoquic.orchestration.generation import GenerationChunk

MAX_TOOLS = 128
# OpenAI's rule for function names; it also keeps them safe inside a JSON string.
FUNCTION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
FALLBACK_PROMPT = (
    "You are a function calling AI model. You are provided with function signatures "
    "within <tools></tools> XML tags. You may call one or more functions to assist with "
    "the user query. Don't make assumptions about what values to plug into functions.\n"
    "<tools>\n{tools}\n</tools>\n"
    "For each function call, return a json object with the function name and arguments "
    "within <tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


@dataclass(frozen=True)
class ToolRequest:
    """The tools a chat request offers and how the model may use them.

    `choice` is "auto", "none", "required" or the name of the function to call.
    """

    tools: tuple[dict[str, Any], ...]  # OpenAI's {"type": "function", "function": {...}}
    choice: str = "auto"
    parallel: bool = True

    @property
    def names(self) -> frozenset[str]:
        return frozenset(t["function"]["name"] for t in self.tools)

    @property
    def active(self) -> bool:
        """Whether the model is told about the tools and its reply is searched for calls."""
        return bool(self.tools) and self.choice != "none"

    @property
    def forced(self) -> str | None:
        """The function the reply must call ("" for any), or None if calling is optional."""
        if not self.active or self.choice == "auto":
            return None
        if self.choice == "required":
            return next(iter(self.names)) if len(self.tools) == 1 else ""
        return self.choice


def parse_tools(obj: dict[str, Any]) -> ToolRequest | None:
    """`tools`, `tool_choice` and `parallel_tool_calls` of a chat body (APIError 400)."""
    tools = obj.get("tools")
    choice = obj.get("tool_choice")
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise invalid("'tool_choice' needs 'tools'", "tool_choice")
        return None
    if not isinstance(tools, list) or len(tools) > MAX_TOOLS:
        raise invalid(f"'tools' must be an array of at most {MAX_TOOLS} tools", "tools")
    checked = tuple(_tool(t, f"tools[{i}]") for i, t in enumerate(tools))
    names = [t["function"]["name"] for t in checked]
    if len(set(names)) != len(names):
        raise invalid("'tools' names a function twice", "tools")
    parallel = obj.get("parallel_tool_calls", True)
    if not isinstance(parallel, bool) and parallel is not None:
        raise invalid("'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    return ToolRequest(checked, _choice(choice, names), parallel is not False)


def _tool(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict) or value.get("type") != "function":
        raise invalid(f'{param} must be {{"type": "function", "function": {{...}}}}', param)
    function = value.get("function")
    if not isinstance(function, dict):
        raise invalid(f"{param}.function must be an object", f"{param}.function")
    name = function.get("name")
    if not isinstance(name, str) or not FUNCTION_NAME.fullmatch(name):
        raise invalid(
            f"{param}.function.name must be 1 to 64 letters, digits, '_', '.' or '-'", param
        )
    parameters = function.get("parameters", {"type": "object", "properties": {}})
    if not isinstance(parameters, dict):
        raise invalid(f"{param}.function.parameters must be a JSON schema object", param)
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise invalid(f"{param}.function.description must be a string", param)
    clean: dict[str, Any] = {"name": name}
    if description:
        clean["description"] = description
    return {"type": "function", "function": {**clean, "parameters": parameters}}


def _choice(value: Any, names: list[str]) -> str:
    if value is None:
        return "auto"
    if value in ("auto", "none", "required"):
        return str(value)
    function = value.get("function") if isinstance(value, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(value, dict) or value.get("type") != "function" or not isinstance(name, str):
        raise invalid(
            '\'tool_choice\' must be "auto", "none", "required" or '
            '{"type": "function", "function": {"name": ...}}',
            "tool_choice",
        )
    if name not in names:
        raise invalid(f"'tool_choice' names '{name}', which is not in 'tools'", "tool_choice")
    return name


def assistant_tool_calls(value: Any, param: str) -> list[dict[str, Any]]:
    """An assistant message's `tool_calls`, checked (arguments stay JSON text)."""
    if not isinstance(value, list):
        raise invalid(f"{param} must be an array", param)
    calls = []
    for i, call in enumerate(value):
        where = f"{param}[{i}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise invalid(f"{where} must be a call with function.name", where)
        arguments = function.get("arguments", "{}")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)  # Ollama's clients send an object
        call_id = call.get("id")
        calls.append(
            {
                "id": call_id if isinstance(call_id, str) else f"call_{i}",
                "type": "function",
                "function": {"name": function["name"], "arguments": arguments},
            }
        )
    return calls


# --- rendering ---------------------------------------------------------------


def template_messages(
    messages: list[dict[str, Any]],
    tools: ToolRequest | None,
    native: bool,
    system_role: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The messages and `tools` to render: through the template when it takes
    tools (`native`), else in the fallback's plain messages, with the tool
    prompt as a system message where the template has that role (`system_role`)."""
    offered = list(tools.tools) if tools is not None and tools.active else None
    if native:
        return [_native_message(m) for m in messages], offered
    plain = _fallback_messages(messages)
    if offered:
        plain = _with_tool_prompt(plain, offered, system_role)
    return plain, None


@lru_cache(maxsize=16)
def template_takes_system(template: str | None) -> bool:
    """Whether the template renders a system message (Gemma's refuse one)."""
    if not template:
        return True  # ChatML, used when a model ships no template, has one
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    try:
        render_chat(template, probe)
    except ChatTemplateError:
        return False
    return True


def _native_message(message: dict[str, Any]) -> dict[str, Any]:
    """Hugging Face templates read arguments as objects, not JSON text."""
    if not message.get("tool_calls"):
        return message
    calls = [
        {**c, "function": {**c["function"], "arguments": _arguments(c["function"]["arguments"])}}
        for c in message["tool_calls"]
    ]
    return {**message, "tool_calls": calls}


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # a template can still print it


def _fallback_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for message in messages:
        if message["role"] == "tool":
            block = f"<tool_response>\n{message['content']}\n</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + block  # consecutive results: one turn
            else:
                out.append({"role": "user", "content": block, "tool_results": True})
        elif message.get("tool_calls"):
            blocks = [_hermes_block(c) for c in message["tool_calls"]]
            text = "\n".join(([message["content"]] if message["content"] else []) + blocks)
            out.append({"role": "assistant", "content": text})
        else:
            out.append({"role": message["role"], "content": message["content"]})
    return [{k: v for k, v in m.items() if k != "tool_results"} for m in out]


def _hermes_block(call: dict[str, Any]) -> str:
    function = call["function"]
    body = json.dumps({"name": function["name"], "arguments": _arguments(function["arguments"])})
    return f"{HERMES_OPEN}\n{body}\n{HERMES_CLOSE}"


def _with_tool_prompt(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]], system_role: bool
) -> list[dict[str, Any]]:
    """The tool prompt before the system message, as a new one, or (for a
    template without that role) before the first user message."""
    described = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    prompt = FALLBACK_PROMPT.format(tools=described)
    first_role = messages[0]["role"] if messages else None
    if first_role == "system" or (first_role == "user" and not system_role):
        first = {**messages[0], "content": prompt + "\n\n" + messages[0]["content"]}
        return [first, *messages[1:]]
    role = "system" if system_role else "user"
    return [{"role": role, "content": prompt}, *messages]


def forced_prefix(tools: ToolRequest | None, fmt: ToolFormat) -> str:
    """The opening of a call the prompt ends with when the reply must call a
    tool: the model continues it, so its reply starts as that call. With the
    function known, the arguments open with its first parameter's name, which
    keeps small models from copying the schema instead of filling it in."""
    name = tools.forced if tools is not None else None
    if name is None or tools is None:
        return ""
    key = "parameters" if fmt is ToolFormat.LLAMA3 else "arguments"
    if name:
        opening = f'{{"name": "{name}", "{key}": {{{_first_parameter(tools, name)}'
    else:
        opening = '{"name": "'
    if fmt is ToolFormat.HERMES:
        return f"{HERMES_OPEN}\n{opening}"
    if fmt is ToolFormat.MISTRAL:
        return f"[TOOL_CALLS][{opening}"
    return opening


def _first_parameter(tools: ToolRequest, name: str) -> str:
    """`"param": ` for the function's first required (else first) parameter, with
    the opening quote of its value when it is a string; "" when it has none."""
    schema = next(t["function"]["parameters"] for t in tools.tools if t["function"]["name"] == name)
    properties = schema.get("properties")
    required = schema.get("required")
    names = list(required) if isinstance(required, list) and required else []
    names += list(properties) if isinstance(properties, dict) else []
    first = next((n for n in names if isinstance(n, str)), None)
    if first is None:
        return ""
    described = properties.get(first) if isinstance(properties, dict) else None
    is_text = isinstance(described, dict) and described.get("type") == "string"
    return json.dumps(first) + (': "' if is_text else ": ")


# --- replies -----------------------------------------------------------------


@dataclass(frozen=True)
class ToolCalling:
    """How one chat request's tool calls are prompted and found."""

    request: ToolRequest | None
    fmt: ToolFormat
    native: bool  # the template renders the tools itself
    system_role: bool = True  # the template renders a system message

    @classmethod
    def for_template(cls, request: ToolRequest | None, template: str | None) -> ToolCalling:
        native = template_takes_tools(template)
        # Probing the system role renders the template: only the fallback needs it.
        system_role = native or request is None or template_takes_system(template)
        return cls(request, tool_format(template), native, system_role)

    @property
    def active(self) -> bool:
        return self.request is not None and self.request.active

    @property
    def prefix(self) -> str:
        """What the assistant's turn starts with (see `forced_prefix`)."""
        return forced_prefix(self.request, self.fmt)

    def render(
        self, messages: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
        """The messages and tools to give the chat template."""
        return template_messages(messages, self.request, self.native, self.system_role)


@dataclass(frozen=True)
class ReplyPiece:
    """Text to show, and on the last piece the calls and the finish reason;
    log-probabilities as in `GenerationChunk` (those of held-back text come
    with a later piece)."""

    text: str
    token_count: int
    finish_reason: str | None = None
    calls: tuple[ToolCall, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob, ...] = ()
    end: TokenLogprob | None = None


async def reply_pieces(
    chunks: AsyncGenerator[GenerationChunk, None], calling: ToolCalling | None
) -> AsyncIterator[ReplyPiece]:
    """The generation's chunks with tool calls taken out of the text: text that
    may begin a call is held back, and the last piece carries the calls with
    finish reason "tool_calls". A forced call ends the reply once it is whole.
    `chunks` is closed when this is."""
    async with aclosing(chunks):
        if calling is None or not calling.active:
            async for chunk in chunks:
                yield ReplyPiece(
                    chunk.text,
                    chunk.token_count,
                    chunk.finish_reason,
                    logprobs=chunk.logprobs,
                    prompt_logprobs=chunk.prompt_logprobs,
                    end=chunk.end,
                )
        else:
            async with aclosing(_with_calls(chunks, calling)) as pieces:
                async for piece in pieces:
                    yield piece


async def _with_calls(
    chunks: AsyncIterator[GenerationChunk], calling: ToolCalling
) -> AsyncGenerator[ReplyPiece, None]:
    assert calling.request is not None
    stream = ToolCallStream(calling.fmt, calling.request.names, calling.prefix)
    forced = calling.request.forced is not None
    scored: tuple[TokenLogprob, ...] = ()  # held until a piece goes out
    async for chunk in chunks:
        text = stream.push(chunk.text)
        scored += chunk.logprobs
        if chunk.finish_reason is None and not (forced and stream.call_complete()):
            if text:
                yield ReplyPiece(text, chunk.token_count, logprobs=scored)
                scored = ()
            continue
        rest = stream.finish()
        calls = rest.calls if calling.request.parallel else rest.calls[:1]
        finish = "tool_calls" if calls else (chunk.finish_reason or "stop")
        text += rest.content or ""
        yield ReplyPiece(text, chunk.token_count, finish, calls, scored, end=chunk.end)
        return
