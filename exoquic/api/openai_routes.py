"""The OpenAI-compatible routes: chat completions, text completions, models."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from quart import Blueprint, Response, current_app, request

from exoquic.api.admission import Admission, Slot
from exoquic.api.errors import APIError
from exoquic.api.logprobs import TextLogprobs, TokenTexts, chat_logprobs
from exoquic.api.metrics import ApiMetrics, GenerationMeter, metered
from exoquic.api.schemas import CompletionParams, parse_chat_request, parse_text_request
from exoquic.api.tool_calls import ToolCall, call_id
from exoquic.api.tools import ReplyPiece, ToolCalling, reply_pieces
from exoquic.engines.logprobs import TokenLogprob
from exoquic.models.errors import MessagesRejectedError
from exoquic.models.generation_defaults import GenerationDefaults
from exoquic.orchestration.generation import (
    GenerationRequest,
    RequestError,
    UnavailableError,
)
from exoquic.orchestration.node import Node, new_request_id

log = logging.getLogger(__name__)
blueprint = Blueprint("openai", __name__)


def node() -> Node:
    return current_app.config["EXOQUIC_NODE"]


def admission() -> Admission:
    return current_app.config["EXOQUIC_ADMISSION"]


def generation_meter(prompt_tokens: int) -> GenerationMeter | None:
    """A meter for the current request's generation (None for an app without metrics)."""
    metrics: ApiMetrics | None = current_app.config.get("EXOQUIC_METRICS")
    if metrics is None:
        return None
    rule = request.url_rule.rule if request.url_rule is not None else request.path
    return metrics.meter(rule, prompt_tokens)


async def json_body() -> Any:
    raw = await request.get_data(as_text=False)
    try:
        return json.loads(raw)
    # ValueError covers bad UTF-8 and integers too long to convert; RecursionError
    # covers nesting deeper than the decoder's stack.
    except (ValueError, RecursionError) as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}") from exc


def with_model_defaults(body: Any, defaults: GenerationDefaults) -> Any:
    """`body` with the model's recommended sampling wherever it names none (a
    missing or null temperature, top_p or top_k); what it names is kept and
    validated as given. max_tokens is settled once the prompt's length is known."""
    if not isinstance(body, dict):
        return body
    recommended = {"temperature": defaults.temperature, "top_p": defaults.top_p,
                   "top_k": defaults.top_k}  # fmt: skip
    return {**body, **{k: v for k, v in recommended.items() if body.get(k) is None}}


@blueprint.post("/v1/chat/completions")
async def chat_completions() -> Response:
    body = with_model_defaults(await json_body(), node().defaults)
    chat = parse_chat_request(body, context=node().max_context)
    serving = serving_node(chat.params.model)
    calling = ToolCalling.for_template(chat.tools, serving.tokenizer.chat_template)
    messages, tools = calling.render(list(chat.messages))
    prompt = await tokenized(serving.encode_chat(messages, tools, calling.prefix), "messages")
    return await complete(serving, prompt, chat.params, chat=True, calling=calling)


@blueprint.post("/v1/completions")
async def completions() -> Response:
    body = with_model_defaults(await json_body(), node().defaults)
    text = parse_text_request(body, context=node().max_context)
    serving = serving_node(text.params.model)
    if isinstance(text.prompt, str):
        prompt = await tokenized(serving.encode_text(text.prompt), "prompt")
    else:
        prompt = list(text.prompt)
        if max(prompt) >= serving.tokenizer.vocab_size:
            raise APIError(400, "'prompt' holds a token id outside the vocabulary", param="prompt")
    prompt_text = text.prompt if isinstance(text.prompt, str) else None
    return await complete(serving, prompt, text.params, chat=False, prompt_text=prompt_text)


async def tokenized(encoding: Awaitable[list[int]], param: str) -> list[int]:
    """The prompt's token ids; a prompt far too long for the context, or messages
    the model's chat template refuses (a system message Gemma has no place for),
    are a 400."""
    try:
        return await encoding
    except RequestError as exc:
        raise APIError(400, str(exc), param=param, code=exc.code) from exc
    except MessagesRejectedError as exc:
        message = f"the model's chat template refused these messages: {exc}"
        raise APIError(400, message, param=param, code="invalid_messages") from exc


@blueprint.get("/v1/models")
async def models() -> dict[str, Any]:
    return {"object": "list", "data": [model_card(node())]}


@blueprint.get("/v1/models/<path:model>")
async def model(model: str) -> dict[str, Any]:
    return model_card(serving_node(model))


def model_card(serving: Node) -> dict[str, Any]:
    return {
        "id": serving.model_id,
        "object": "model",
        "created": int(serving.started_at),
        "owned_by": "exoquic",
        "context_length": serving.max_context,
        # What a request gets for the sampling fields and max_tokens it leaves out.
        "defaults": serving.defaults.as_dict(),
    }


def serving_node(model: str) -> Node:
    serving = node()
    if not serving.serves(model):
        raise APIError(
            404,
            f"the model '{model}' does not exist or is not loaded; this node serves "
            f"'{serving.model_id}' (see GET /v1/models)",
            param="model",
            code="model_not_found",
        )
    return serving


def check_room(serving: Node, prompt: list[int], params: CompletionParams, chat: bool) -> None:
    """Refuse, as OpenAI does, a request the node cannot take (`Node.check_request`)."""
    try:
        serving.check_request(len(prompt), params.max_tokens)
    except RequestError as exc:
        param = exc.param or ("messages" if chat else "prompt")
        raise APIError(400, str(exc), param=param, code=exc.code) from exc


async def complete(
    serving: Node,
    prompt: list[int],
    params: CompletionParams,
    *,
    chat: bool,
    calling: ToolCalling | None = None,
    prompt_text: str | None = None,
) -> Response:
    generation = new_generation(serving, prompt, params, chat)
    shape = ResponseShape(serving.model_id, generation.request_id, chat, len(prompt))
    meter = generation_meter(len(prompt))
    # The echoed prompt as the client sent it (token ids: their text).
    echo = None
    if params.echo:
        echo = prompt_text if prompt_text is not None else serving.tokenizer.decode(prompt)
    scores = None
    if params.logprobs is not None:
        scores = LogprobShape(serving.tokenizer, chat, prompt if params.echo else None)
    # Admitted only once the request is known to be valid: a bad one gets its
    # 400, not a 429, and never takes a slot.
    slot = await admission().admit()
    if params.stream:
        usage = params.include_usage
        return stream_response(
            serving, generation, shape, usage, slot, calling, meter, scores, echo
        )
    with slot:
        reply = await collect(serving, generation, calling, meter)
    logprobs = scores.format(reply) if scores else None
    reply = replace(reply, text=(echo or "") + reply.text)
    return Response(
        json.dumps(shape.whole(reply, logprobs)),
        content_type="application/json",
    )


def new_generation(
    serving: Node, prompt: list[int], params: CompletionParams, chat: bool
) -> GenerationRequest:
    """The generation a valid request asks for (400 when it cannot fit)."""
    check_room(serving, prompt, params, chat)
    return GenerationRequest(
        request_id=new_request_id(),
        prompt_tokens=tuple(prompt),
        sampling=params.sampling,
        # Without max_tokens, the model's finite default (the node cuts any
        # budget to the room the context has left).
        max_tokens=params.max_tokens or serving.defaults.max_tokens,
        stop=params.stop,
        logprobs=params.logprobs,
        score_prompt=params.echo and params.logprobs is not None,
    )


async def collect(
    serving: Node,
    generation: GenerationRequest,
    calling: ToolCalling | None = None,
    meter: GenerationMeter | None = None,
) -> ReplyPiece:
    """The whole reply as one piece: all its text, its calls, its finish reason
    and every log-probability."""
    parts: list[str] = []
    scored: list[TokenLogprob] = []
    prompt: tuple[TokenLogprob, ...] = ()
    last = ReplyPiece("", 0)
    async with open_reply(serving, generation, calling, meter) as pieces:
        async for piece in pieces:
            parts.append(piece.text)
            scored.extend(piece.logprobs)
            prompt = prompt or piece.prompt_logprobs
            last = piece
    text = "".join(parts)
    return replace(last, text=text, logprobs=tuple(scored), prompt_logprobs=prompt)


class LogprobShape:
    """The `logprobs` object of a chat or text choice (see api/logprobs.py); a
    stream's text offsets continue from chunk to chunk. With `echo` (the prompt's
    ids), the first object starts with the prompt's tokens."""

    def __init__(self, tokenizer: TokenTexts, chat: bool, echo: list[int] | None = None) -> None:
        self.tokenizer = tokenizer
        self.text = None if chat else TextLogprobs(tokenizer)
        self.echo = echo

    def format(self, piece: ReplyPiece) -> dict[str, Any]:
        if self.text is None:
            return chat_logprobs(self.tokenizer, piece.logprobs)
        # Text completions list an end token too: a harness that scores a prompt
        # with max_tokens 1 drops the last entry as the generated one.
        scored = [*piece.logprobs, *([piece.end] if piece.end else [])]
        if self.echo is None:
            return self.text.format(scored)
        first, self.echo = self.echo[0], None
        return self.text.format([*piece.prompt_logprobs, *scored], unscored=first)


def stream_response(
    serving: Node,
    generation: GenerationRequest,
    shape: ResponseShape,
    include_usage: bool,
    slot: Slot,
    calling: ToolCalling | None = None,
    meter: GenerationMeter | None = None,
    scores: LogprobShape | None = None,
    echo: str | None = None,
) -> Response:
    """The SSE response; its body owns `slot` and frees it when the stream ends."""
    events = stream_events(
        serving, generation, shape, include_usage, slot, calling, meter, scores, echo
    )
    slot.release_with(events)  # in case the server drops the body unread
    response = Response(events, content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # reverse proxies: do not buffer
    response.timeout = None
    return response


async def stream_events(
    serving: Node,
    generation: GenerationRequest,
    shape: ResponseShape,
    include_usage: bool,
    slot: Slot,
    calling: ToolCalling | None = None,
    meter: GenerationMeter | None = None,
    scores: LogprobShape | None = None,
    echo: str | None = None,
) -> AsyncIterator[bytes]:
    """The SSE body. A client that disconnects cancels this iterator (quart-trio
    cancels the request's task on `http.disconnect`), and `aclosing` then frees
    the request's KV cache at once; `slot` is freed however the stream ends."""
    with slot:
        if shape.chat:
            yield sse(shape.chunk({"role": "assistant", "content": ""}, None))
        tokens = 0
        try:
            async with open_reply(serving, generation, calling, meter) as pieces:
                async for piece in pieces:
                    tokens = piece.token_count
                    text = (echo or "") + piece.text  # an echoed prompt goes out first
                    if text or (scores and (piece.logprobs or piece.end)):
                        echo = None
                        logprobs = scores.format(piece) if scores else None
                        delta = {"content": text}
                        yield sse(shape.chunk(delta, None, text=text, logprobs=logprobs))
                    for index, call in enumerate(piece.calls):
                        yield sse(shape.chunk({"tool_calls": [shape.tool_call(call, index)]}, None))
                    if piece.finish_reason:
                        yield sse(shape.chunk({}, piece.finish_reason, text=""))
        except Exception as exc:
            # The 200 status is already sent: report the failure the way OpenAI's
            # stream does, as an error event, and still end the stream cleanly.
            log.exception("generation %s failed mid-stream", generation.request_id)
            code = exc.code if isinstance(exc, UnavailableError) else None
            yield sse(
                APIError(500, f"generation failed: {exc}", type="server_error", code=code).body()
            )
        else:
            if include_usage:
                yield sse(shape.usage_chunk(tokens))
        yield b"data: [DONE]\n\n"


def open_reply(
    serving: Node,
    generation: GenerationRequest,
    calling: ToolCalling | None = None,
    meter: GenerationMeter | None = None,
) -> aclosing[AsyncGenerator[ReplyPiece, None]]:
    """The reply's pieces: `serving.generate(...)`'s chunks, timed and counted by
    `meter`, with tool calls taken out (`calling`; see `reply_pieces`). Closed
    on exit, each layer closing the one it reads, so the KV cache is freed
    however we leave."""
    chunks = serving.generate(generation)
    assert isinstance(chunks, AsyncGenerator)  # typed as an iterator, built as a generator
    pieces = reply_pieces(metered(chunks, meter), calling)
    assert isinstance(pieces, AsyncGenerator)
    return aclosing(pieces)


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, ensure_ascii=False).encode() + b"\n\n"


class ResponseShape:
    """Builds the JSON objects of a chat or text completion response."""

    def __init__(self, model: str, request_id: str, chat: bool, prompt_tokens: int) -> None:
        self.model = model
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id
        self.chat = chat
        self.prompt_tokens = prompt_tokens
        self.created = int(time.time())

    def _envelope(self, stream: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": kind + ".chunk" if stream and self.chat else kind,
            "created": self.created,
            "model": self.model,
        }

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    def whole(self, reply: ReplyPiece, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
        finish = reply.finish_reason
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": logprobs}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": reply.text}
            if reply.calls:
                # OpenAI's shape: no content (null) when the reply is only calls.
                message["content"] = reply.text or None
                calls = [self.tool_call(c, i) for i, c in enumerate(reply.calls)]
                message["tool_calls"] = [
                    {k: v for k, v in c.items() if k != "index"} for c in calls
                ]
            choice["message"] = message
        else:
            choice["text"] = reply.text
        return {
            **self._envelope(stream=False),
            "choices": [choice],
            "usage": self.usage(reply.token_count),
        }

    def tool_call(self, call: ToolCall, index: int) -> dict[str, Any]:
        """One call as OpenAI shows it (`index` matters only in stream deltas)."""
        return {
            "index": index,
            "id": call_id(self.id.removeprefix("chatcmpl-"), index),
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments_json()},
        }

    def chunk(
        self,
        delta: dict[str, Any],
        finish: str | None,
        text: str = "",
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": logprobs}
        if self.chat:
            choice["delta"] = delta
        else:
            choice["text"] = text
        return {**self._envelope(stream=True), "choices": [choice]}

    def usage_chunk(self, completion_tokens: int) -> dict[str, Any]:
        return {
            **self._envelope(stream=True),
            "choices": [],
            "usage": self.usage(completion_tokens),
        }
