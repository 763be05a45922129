"""Validating OpenAI request bodies into plain dataclasses (pure, no I/O).

Every field the API accepts is checked for type and range here, and a field we
cannot honour is refused rather than silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from exoquic.api.errors import invalid
from exoquic.api.tools import ToolRequest, assistant_tool_calls, parse_tools
from exoquic.engines.constraints import GrammarError, grammar_for
from exoquic.engines.sampling import MAX_REPETITION_PENALTY, SamplingParams

ROLES = ("system", "user", "assistant", "developer", "tool")
MAX_STOPS = 4
# Longer stop strings are refused: text that may begin one is held back from a
# stream, and matching keeps a table as long as each one (see orchestration/stops.py).
MAX_STOP_CHARS = 256
# Parameters clients commonly send with their default values; anything else is refused.
NEUTRAL_DEFAULTS: dict[str, Any] = {}  # none today: n, penalties and logprobs are honoured
# Choices one request may ask for (`n`): each is a generation of its own, and
# the request takes one admission slot for all of them.
MAX_CHOICES = 8
MAX_LOGIT_BIAS = 1024  # entries of `logit_bias` (OpenAI documents 300; tools send more)
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
IGNORED = {"user", "metadata", "store", "service_tier"}
# Keys the official SDKs echo back on assistant messages; accepted only while empty.
EMPTY_MESSAGE_FIELDS = ("refusal", "function_call", "audio", "annotations")
# Tool-calling fields each role may carry (see exoquic.api.tools).
MESSAGE_TOOL_FIELDS = {"assistant": {"tool_calls"}, "tool": {"tool_call_id"}}
MAX_PROMPT_ITEMS = 1_000_000
CHAT_FIELDS = frozenset(
    {
        "messages",
        "max_completion_tokens",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "logprobs",
        "top_logprobs",
    }
)
TEXT_FIELDS = frozenset({"prompt", "echo", "suffix", "best_of", "logprobs"})
MAX_CHAT_TOP_LOGPROBS = 20  # OpenAI's limits
MAX_TEXT_LOGPROBS = 5
COMMON_FIELDS = frozenset(
    {
        "model",
        "temperature",
        "top_p",
        "top_k",
        "max_tokens",
        "stop",
        "seed",
        "stream",
        "stream_options",
        "n",
        "min_p",
        "presence_penalty",
        "frequency_penalty",
        "repetition_penalty",
        "logit_bias",
        *NEUTRAL_DEFAULTS,
        *IGNORED,
    }
)


@dataclass(frozen=True)
class CompletionParams:
    """What chat and text completions share."""

    model: str
    sampling: SamplingParams
    max_tokens: int | None
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    n: int = 1  # choices, each seeded seed + i (see `choice_sampling`)
    # Not None: report each generated token's log-probability and this many best
    # alternatives (chat: top_logprobs when logprobs is true; text: logprobs).
    logprobs: int | None = None
    echo: bool = False  # text completions: the reply starts with the prompt


@dataclass(frozen=True)
class ChatRequest:
    """`messages` hold `role` and `content` (a string), and where given an
    assistant's `tool_calls` (OpenAI's shape) or a tool result's `tool_call_id`."""

    messages: tuple[dict[str, Any], ...]
    params: CompletionParams
    tools: ToolRequest | None = None


@dataclass(frozen=True)
class TextRequest:
    prompt: str | tuple[int, ...]  # text, or token ids given by the client
    params: CompletionParams


def parse_chat_request(body: Any, context: int = MAX_PROMPT_ITEMS) -> ChatRequest:
    """Validate a `POST /v1/chat/completions` body (raises APIError 400).

    As many messages as `context`, or text parts in one message, are refused
    before each is checked: every one renders to at least one token.
    """
    obj = _object(body)
    _reject_unknown(obj, CHAT_FIELDS)
    common = replace(_common(obj), logprobs=chat_logprobs_count(obj))
    common = with_response_format(common, obj.get("response_format"))
    messages = _messages(obj.get("messages"), context)
    return ChatRequest(messages, common, parse_tools(obj))


def with_response_format(params: CompletionParams, value: Any) -> CompletionParams:
    """`params` following a chat request's `response_format` (a 400 when it is bad)."""
    grammar = _response_format(value)
    if grammar is None:
        return params
    return replace(params, sampling=replace(params.sampling, grammar=grammar))


def parse_text_request(body: Any, context: int = MAX_PROMPT_ITEMS) -> TextRequest:
    """Validate a `POST /v1/completions` body (raises APIError 400).

    An array of `context` token ids or more is refused before its ids are
    checked one by one: it could not fit a context of that many tokens.
    """
    obj = _object(body)
    _reject_unknown(obj, TEXT_FIELDS)
    for name, neutral in (("suffix", None), ("best_of", 1)):
        if obj.get(name, neutral) not in (neutral, None):
            raise invalid(f"'{name}' is not supported", name)
    echo = obj.get("echo")
    if echo is not None and not isinstance(echo, bool):
        raise invalid("'echo' must be a boolean", "echo")
    logprobs = obj.get("logprobs")
    if logprobs is not None:
        logprobs = _integer(obj, "logprobs", 0, 0, MAX_TEXT_LOGPROBS)
    params = replace(_common(obj), logprobs=logprobs, echo=bool(echo))
    return TextRequest(_prompt(obj.get("prompt"), context), params)


def chat_logprobs_count(obj: dict[str, Any]) -> int | None:
    """How many alternatives a chat request wants with each token's log-probability
    (None: no log-probabilities); top_logprobs needs logprobs true, as on OpenAI."""
    wanted = obj.get("logprobs")
    if wanted is not None and not isinstance(wanted, bool):
        raise invalid("'logprobs' must be a boolean", "logprobs")
    top = _integer(obj, "top_logprobs", 0, 0, MAX_CHAT_TOP_LOGPROBS)
    if obj.get("top_logprobs") is not None and not wanted:
        raise invalid("'top_logprobs' needs 'logprobs' to be true", "top_logprobs")
    return top if wanted else None


def _prompt(value: Any, context: int) -> str | tuple[int, ...]:
    """A string or an array of token ids; a one-element batch of either is unwrapped."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        _check_count(value, context, "tokens", "prompt")
    if (
        isinstance(value, list)
        and 0 < len(value) <= MAX_PROMPT_ITEMS
        and all(_is_int(t) and 0 <= t < 2**31 for t in value)
    ):
        return tuple(value)
    raise invalid(
        "'prompt' must be a string or an array of token ids (one prompt per request)", "prompt"
    )


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object")
    return body


def _reject_unknown(obj: dict[str, Any], extra: frozenset[str]) -> None:
    for name in obj:
        if name not in COMMON_FIELDS and name not in extra:
            raise invalid(f"unrecognized request argument supplied: {name}", name)
    for name, neutral in NEUTRAL_DEFAULTS.items():
        if name in obj and obj[name] is not None and obj[name] != neutral:
            raise invalid(f"'{name}' is not supported (only {neutral!r})", name)


def _common(obj: dict[str, Any]) -> CompletionParams:
    model = obj.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("'model' is required and must be a string", "model")
    temperature = _number(obj, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(obj, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0.0:
        raise invalid("'top_p' must be greater than 0", "top_p")
    top_k = _integer(obj, "top_k", 0, 0, 1_000_000)
    seed = obj.get("seed")
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**63):
        raise invalid("'seed' must be a non-negative integer", "seed")
    stream = obj.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise invalid("'stream' must be a boolean", "stream")
    return CompletionParams(
        model=model,
        sampling=SamplingParams(
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            min_p=_number(obj, "min_p", 0.0, 0.0, 1.0),
            presence_penalty=_number(obj, "presence_penalty", 0.0, -2.0, 2.0),
            frequency_penalty=_number(obj, "frequency_penalty", 0.0, -2.0, 2.0),
            repetition_penalty=_repetition_penalty(obj),
            logit_bias=_logit_bias(obj.get("logit_bias")),
        ),
        n=_integer(obj, "n", 1, 1, MAX_CHOICES),
        max_tokens=_max_tokens(obj),
        stop=_stops(obj.get("stop")),
        stream=bool(stream),
        include_usage=_include_usage(obj.get("stream_options"), bool(stream)),
    )


def _repetition_penalty(obj: dict[str, Any]) -> float:
    value = _number(obj, "repetition_penalty", 1.0, 0.0, MAX_REPETITION_PENALTY)
    if value == 0.0:
        raise invalid("'repetition_penalty' must be greater than 0", "repetition_penalty")
    return value


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...]:
    """OpenAI's map of token ids (as JSON object keys) to biases in -100..100.
    Whether the ids are in the vocabulary is the route's check (`check_logit_bias`)."""
    if value is None:
        return ()
    if not isinstance(value, dict) or len(value) > MAX_LOGIT_BIAS:
        raise invalid(
            f"'logit_bias' must be an object of at most {MAX_LOGIT_BIAS} token ids", "logit_bias"
        )
    pairs = []
    for key, bias in value.items():
        if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) <= 10):
            raise invalid(f"'logit_bias' keys must be token ids, not {key[:20]!r}", "logit_bias")
        if isinstance(bias, bool) or not isinstance(bias, int | float) or not -100 <= bias <= 100:
            raise invalid(
                f"'logit_bias' values must be numbers between -100 and 100 (token {key})",
                "logit_bias",
            )
        pairs.append((int(key), float(bias)))
    return tuple(sorted(pairs))


def _response_format(value: Any) -> str | None:
    """The grammar of `response_format` (None: plain text); a 400 when it is
    malformed or its schema cannot be compiled."""
    if value is None:
        return None
    if not isinstance(value, dict) or value.get("type") not in RESPONSE_FORMATS:
        raise invalid(
            "'response_format' must be an object whose 'type' is one of "
            + ", ".join(RESPONSE_FORMATS),
            "response_format",
        )
    if value["type"] == "json_schema":
        _check_json_schema_spec(value.get("json_schema"))
    try:
        return grammar_for(value)
    except GrammarError as exc:
        raise invalid(str(exc), "response_format") from exc


def _check_json_schema_spec(spec: Any) -> None:
    param = "response_format.json_schema"
    if not isinstance(spec, dict):
        raise invalid(f"'{param}' must be an object with a 'name' and a 'schema'", param)
    name = spec.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        raise invalid(f"'{param}.name' must be a string of 1 to 64 characters", f"{param}.name")
    if not isinstance(spec.get("schema", {}), dict):
        raise invalid(f"'{param}.schema' must be a JSON Schema object", f"{param}.schema")
    if not isinstance(spec.get("strict", False), bool | None):
        raise invalid(f"'{param}.strict' must be a boolean", f"{param}.strict")


def choice_sampling(sampling: SamplingParams, index: int) -> SamplingParams:
    """The sampling of choice `index` of a request with n > 1: its own seed,
    seed + index, so that each choice is reproducible on its own."""
    if sampling.seed is None:
        return sampling
    return replace(sampling, seed=(sampling.seed + index) % 2**63)


def _check_count(items: list[Any], context: int, what: str, param: str) -> None:
    """Refuse, by its length alone, an array whose items each take a token or more."""
    if len(items) >= context:
        raise invalid(
            f"'{param}' has {len(items)} {what}, each at least one token; this node's context "
            f"is {context} tokens and must leave room for at least one reply token",
            param,
            code="context_length_exceeded",
        )


def _messages(value: Any, context: int) -> tuple[dict[str, Any], ...]:
    if not isinstance(value, list) or not value:
        raise invalid("'messages' must be a non-empty array", "messages")
    _check_count(value, context, "messages", "messages")
    return tuple(_message(m, i, context) for i, m in enumerate(value))


def _message(value: Any, index: int, context: int) -> dict[str, Any]:
    param = f"messages[{index}]"
    if not isinstance(value, dict):
        raise invalid(f"{param} must be an object", param)
    role = value.get("role")
    if role not in ROLES:
        raise invalid(f"{param}.role must be one of {', '.join(ROLES)}", f"{param}.role")
    allowed = {"role", "content", "name"} | MESSAGE_TOOL_FIELDS.get(role, set())
    for key, field_value in value.items():
        if key in allowed or (key in EMPTY_MESSAGE_FIELDS and not field_value):
            continue
        if key == "tool_calls" and not field_value:
            continue
        raise invalid(f"{param}.{key} is not supported", f"{param}.{key}")
    if "name" in value and not isinstance(value["name"], str):
        raise invalid(f"{param}.name must be a string", f"{param}.name")
    message: dict[str, Any] = {"role": "system" if role == "developer" else role}
    calls = value.get("tool_calls")
    if calls:
        message["tool_calls"] = assistant_tool_calls(calls, f"{param}.tool_calls")
    content = value.get("content")
    # An assistant turn that only calls tools has no content.
    message["content"] = (
        "" if content is None and calls else _content(content, f"{param}.content", context)
    )
    if role == "tool":
        call_id = value.get("tool_call_id")
        if call_id is not None and not isinstance(call_id, str):
            raise invalid(f"{param}.tool_call_id must be a string", f"{param}.tool_call_id")
        message["tool_call_id"] = call_id or ""
        if isinstance(value.get("name"), str):
            message["name"] = value["name"]
    return message


def _content(value: Any, param: str, context: int) -> str:
    """A string, or an array of text parts (the newer OpenAI form)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        _check_count(value, context, "text parts", param)
        texts = []
        for part in value:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise invalid(f"{param}: only text parts are supported", param)
            if not isinstance(part.get("text"), str):
                raise invalid(f"{param}: a text part needs a string 'text'", param)
            texts.append(part["text"])
        return "".join(texts)
    raise invalid(f"{param} must be a string or an array of text parts", param)


def _max_tokens(obj: dict[str, Any]) -> int | None:
    values = [obj[k] for k in ("max_completion_tokens", "max_tokens") if obj.get(k) is not None]
    if not values:
        return None
    for value in values:
        if not _is_int(value) or value < 1:
            raise invalid("'max_tokens' must be a positive integer", "max_tokens")
    return int(min(values))


def _stops(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise invalid("'stop' must be a non-empty string or an array of them", "stop")
    if len(stops) > MAX_STOPS:
        raise invalid(f"'stop' takes at most {MAX_STOPS} sequences", "stop")
    if any(len(s) > MAX_STOP_CHARS for s in stops):
        raise invalid(f"each 'stop' sequence may be at most {MAX_STOP_CHARS} characters", "stop")
    return tuple(stops)


def _include_usage(value: Any, stream: bool) -> bool:
    if value is None:
        return False
    if not isinstance(value, dict) or not isinstance(value.get("include_usage", False), bool):
        raise invalid(
            "'stream_options' must be an object like {\"include_usage\": true}", "stream_options"
        )
    if not stream:
        raise invalid("'stream_options' is only allowed when 'stream' is true", "stream_options")
    return bool(value.get("include_usage", False))


def _number(obj: dict[str, Any], name: str, default: float, low: float, high: float) -> float:
    value = obj.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise invalid(f"'{name}' must be a number between {low:g} and {high:g}", name)
    return float(value)


def _integer(obj: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = obj.get(name)
    if value is None:
        return default
    if not _is_int(value) or not low <= value <= high:
        raise invalid(f"'{name}' must be an integer between {low} and {high}", name)
    return int(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
