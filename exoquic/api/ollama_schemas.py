"""Ollama's request bodies mapped onto the OpenAI ones, and its reply objects (pure).

Ollama's `/api/chat` and `/api/generate` take the conversation and an `options`
map; we translate both into the OpenAI chat body `exoquic.api.schemas`
validates, so the two APIs accept and refuse the same things (errors are
reworded in Ollama's `{"error": ...}` shape by the routes).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from exoquic.api.errors import invalid
from exoquic.api.tool_calls import ToolCall

# The Ollama release whose API these routes follow (clients check it for features).
OLLAMA_VERSION = "0.12.0"
# `options` that map onto an OpenAI field; other known options are runtime
# settings Ollama itself may ignore (num_ctx, num_thread, ...), and so do we.
OPTION_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "seed": "seed",
    "stop": "stop",
    "min_p": "min_p",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": "repetition_penalty",
}
# Fields that change nothing here: the model is always loaded, thinking is the model's.
IGNORED_FIELDS = ("keep_alive", "think", "truncate", "shift")
# Top-level fields with the same name and meaning in OpenAI's chat body.
LOGPROB_FIELDS = ("logprobs", "top_logprobs")


@dataclass(frozen=True)
class GenerateBody:
    """What `/api/generate` asks for, once checked."""

    chat_body: dict[str, Any]  # the OpenAI chat body (or a text body when `raw`)
    raw: bool  # the prompt is sent as-is, without the chat template
    prompt: str
    stream: bool


def chat_body(body: Any) -> tuple[dict[str, Any], bool]:
    """An `/api/chat` body as an OpenAI chat body, and whether to stream (400s)."""
    obj = _object(body)
    _known(obj, {"model", "messages", "tools", "format", "options", "stream", *LOGPROB_FIELDS})
    messages = obj.get("messages")
    if not isinstance(messages, list):
        raise invalid("'messages' must be an array", "messages")
    mapped = {
        "model": model_name(obj),
        "messages": [_message(m, i) for i, m in enumerate(messages)],
        **_options(obj.get("options")),
        **_format(obj.get("format")),
        **_logprobs(obj),
    }
    if obj.get("tools"):
        mapped["tools"] = obj["tools"]
    return mapped, _stream(obj)


def generate_body(body: Any) -> GenerateBody:
    """An `/api/generate` body (400s for what we cannot honour)."""
    obj = _object(body)
    _known(
        obj,
        {"model", "prompt", "suffix", "system", "template", "context", "raw", "format", "images"}
        | {"options", "stream", *LOGPROB_FIELDS},
    )
    for name in ("suffix", "template", "context", "images"):
        if obj.get(name):
            raise invalid(f"'{name}' is not supported", name)
    prompt = obj.get("prompt") or ""
    system = obj.get("system") or ""
    if not isinstance(prompt, str) or not isinstance(system, str):
        raise invalid("'prompt' and 'system' must be strings", "prompt")
    raw = obj.get("raw") is True
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    mapped = {
        "model": model_name(obj),
        "messages": messages,
        **_options(obj.get("options")),
        **_format(obj.get("format")),
        **_logprobs(obj),
    }
    return GenerateBody(mapped, raw, prompt, _stream(obj))


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    return body


def _known(obj: dict[str, Any], fields: set[str]) -> None:
    for name in obj:
        if name not in fields and name not in IGNORED_FIELDS and name != "name":
            raise invalid(f"unrecognized field: {name}", name)


def model_name(obj: dict[str, Any]) -> str:
    """`model` (or the older `name`) without Ollama's default `:latest` tag."""
    model = obj.get("model", obj.get("name"))
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required and must be a string", "model")
    return model.removesuffix(":latest")


def _stream(obj: dict[str, Any]) -> bool:
    stream = obj.get("stream", True)  # Ollama streams unless told not to
    if not isinstance(stream, bool) and stream is not None:
        raise invalid("'stream' must be a boolean", "stream")
    return stream is not False


def _message(value: Any, index: int) -> dict[str, Any]:
    """Ollama's message: images are refused, tool calls carry object arguments,
    a tool result names its function in `tool_name`."""
    if not isinstance(value, dict):
        raise invalid(f"messages[{index}] must be an object", f"messages[{index}]")
    if value.get("images"):
        raise invalid("this model takes no images", f"messages[{index}].images")
    message = {k: v for k, v in value.items() if k in ("role", "content", "tool_calls")}
    if value.get("role") == "tool" and isinstance(value.get("tool_name"), str):
        message["name"] = value["tool_name"]
    return message


def _options(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid("'options' must be an object", "options")
    mapped = {OPTION_FIELDS[k]: v for k, v in value.items() if k in OPTION_FIELDS}
    predict = value.get("num_predict")
    # -1 (forever) and -2 (fill the context) both mean: up to the node's budget.
    if predict is not None and not (isinstance(predict, int) and predict < 0):
        mapped["max_tokens"] = predict
    return mapped


def _logprobs(obj: dict[str, Any]) -> dict[str, Any]:
    """`logprobs` and `top_logprobs` (0-20) as given: the chat body checks them."""
    return {name: obj[name] for name in LOGPROB_FIELDS if obj.get(name) is not None}


def _format(value: Any) -> dict[str, Any]:
    """`format`: "json" or a JSON schema, as OpenAI's `response_format`."""
    if value in (None, ""):
        return {}
    if value == "json":
        return {"response_format": {"type": "json_object"}}
    if isinstance(value, dict):
        schema = {"name": "format", "schema": value, "strict": True}
        return {"response_format": {"type": "json_schema", "json_schema": schema}}
    raise invalid("'format' must be \"json\" or a JSON schema object", "format")


# --- replies -----------------------------------------------------------------


def timestamp(seconds: float) -> str:
    """Ollama's `created_at`: RFC 3339 in UTC with nanosecond-style precision."""
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def tool_calls(calls: tuple[ToolCall, ...]) -> list[dict[str, Any]]:
    """Calls as Ollama shows them: arguments as an object."""
    return [
        {"function": {"index": i, "name": c.name, "arguments": c.arguments}}
        for i, c in enumerate(calls)
    ]


@dataclass(frozen=True)
class Timings:
    """A generation's timings as Ollama reports them (nanoseconds)."""

    started: float  # perf_counter seconds at the request's start
    first_token: float | None
    ended: float
    prompt_tokens: int
    completion_tokens: int

    def as_dict(self) -> dict[str, int]:
        first = self.first_token if self.first_token is not None else self.ended
        return {
            "total_duration": _ns(self.ended - self.started),
            "load_duration": 0,  # the model is always loaded
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": _ns(first - self.started),
            "eval_count": self.completion_tokens,
            "eval_duration": _ns(self.ended - first),
        }


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def model_digest(model_id: str) -> str:
    """A stable stand-in for Ollama's manifest digest (clients only compare them)."""
    return hashlib.sha256(model_id.encode()).hexdigest()


def parameter_size(parameters: int) -> str:
    """Ollama's `parameter_size`: 135M, 1.2B, 8.0B."""
    if parameters >= 10**9:
        return f"{parameters / 10**9:.1f}B"
    return f"{round(parameters / 10**6)}M"
