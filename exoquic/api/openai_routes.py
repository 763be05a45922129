"""The OpenAI-compatible routes: chat completions, text completions, models."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from contextlib import aclosing, suppress
from dataclasses import dataclass, replace
from typing import Any

import trio
from quart import Blueprint, Response, current_app, request

from exoquic.api.admission import Admission, Slot
from exoquic.api.errors import APIError
from exoquic.api.logprobs import TextLogprobs, TokenTexts, chat_logprobs
from exoquic.api.metrics import ApiMetrics, GenerationMeter, metered
from exoquic.api.schemas import (
    CompletionParams,
    choice_sampling,
    parse_chat_request,
    parse_text_request,
)
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


def check_logit_bias(serving: Node, params: CompletionParams) -> None:
    vocabulary = serving.tokenizer.vocab_size
    for token, _ in params.sampling.logit_bias:
        if token >= vocabulary:
            raise APIError(
                400,
                f"'logit_bias' names token {token}, outside the vocabulary of {vocabulary}",
                param="logit_bias",
            )


async def complete(
    serving: Node,
    prompt: list[int],
    params: CompletionParams,
    *,
    chat: bool,
    calling: ToolCalling | None = None,
    prompt_text: str | None = None,
) -> Response:
    generations = new_generations(serving, prompt, params, chat)
    shape = ResponseShape(serving.model_id, generations[0].request_id, chat, len(prompt))
    # One meter per choice; the prompt is counted once, with the first.
    meters = [generation_meter(len(prompt) if i == 0 else 0) for i in range(len(generations))]
    # The echoed prompt as the client sent it (token ids: their text).
    echo = None
    if params.echo:
        echo = prompt_text if prompt_text is not None else serving.tokenizer.decode(prompt)
    # One per choice: a stream's text offsets run on within each choice.
    scores = [
        LogprobShape(serving.tokenizer, chat, prompt if params.echo else None)
        if params.logprobs is not None
        else None
        for _ in generations
    ]
    replies = Replies(serving, generations, calling, meters, scores, echo)
    if params.sampling.grammar is not None:
        await serving.prepare_grammars()
    # Admitted only once the request is known to be valid: a bad one gets its
    # 400, not a 429, and never takes a slot.
    slot = await admission().admit()
    if params.stream:
        return stream_response(replies, shape, params.include_usage, slot)
    with slot:
        choices = [replies.finished(i, c) for i, c in enumerate(await collect(replies))]
    body = shape.whole(*choices[0])
    if len(choices) > 1:
        body["choices"] = [
            shape.whole(reply, logprobs, i)["choices"][0]
            for i, (reply, logprobs) in enumerate(choices)
        ]
        body["usage"] = shape.usage(sum(reply.token_count for reply, _ in choices))
    return Response(json.dumps(body), content_type="application/json")


def new_generations(
    serving: Node, prompt: list[int], params: CompletionParams, chat: bool
) -> list[GenerationRequest]:
    """The generations a valid request asks for, one per choice (400 when it
    cannot fit)."""
    check_room(serving, prompt, params, chat)
    check_logit_bias(serving, params)
    return [
        GenerationRequest(
            request_id=new_request_id(),
            prompt_tokens=tuple(prompt),
            sampling=choice_sampling(params.sampling, index),
            # Without max_tokens, the model's finite default (the node cuts any
            # budget to the room the context has left).
            max_tokens=params.max_tokens or serving.defaults.max_tokens,
            stop=params.stop,
            logprobs=params.logprobs,
            score_prompt=params.echo and params.logprobs is not None,
        )
        for index in range(params.n)
    ]


def new_generation(
    serving: Node, prompt: list[int], params: CompletionParams, chat: bool
) -> GenerationRequest:
    """The one generation of a request that asks for one choice (Ollama's)."""
    return new_generations(serving, prompt, params, chat)[0]


@dataclass(frozen=True)
class Replies:
    """A request's choices: their generations, how tool calls are found in
    them, one meter and one log-probability shape per choice, and the echoed
    prompt."""

    serving: Node
    generations: list[GenerationRequest]
    calling: ToolCalling | None
    meters: list[GenerationMeter | None]
    scores: list[LogprobShape | None] | None = None  # None: no log-probabilities
    echo: str | None = None  # text each choice starts with (a text completion's prompt)

    def open(self, index: int) -> aclosing[AsyncGenerator[ReplyPiece, None]]:
        """Choice `index`'s reply (see `open_reply`)."""
        generation = self.generations[index]
        return open_reply(self.serving, generation, self.calling, self.meters[index])

    def score(self, index: int) -> LogprobShape | None:
        return self.scores[index] if self.scores else None

    def finished(self, index: int, reply: ReplyPiece) -> tuple[ReplyPiece, dict[str, Any] | None]:
        """Choice `index` whole as the response shows it: the echo before its
        text, and its `logprobs` object."""
        scores = self.score(index)
        logprobs = scores.format(reply) if scores else None
        return replace(reply, text=(self.echo or "") + reply.text), logprobs


async def collect(replies: Replies) -> list[ReplyPiece]:
    """Each choice whole, as one piece: all its text, its calls, its finish
    reason and every log-probability."""
    count = len(replies.generations)
    parts: list[list[str]] = [[] for _ in range(count)]
    scored: list[list[TokenLogprob]] = [[] for _ in range(count)]
    prompt: list[tuple[TokenLogprob, ...]] = [() for _ in range(count)]
    last = [ReplyPiece("", 0) for _ in range(count)]
    async with aclosing(choice_pieces(replies)) as pieces:
        async for index, piece in pieces:
            parts[index].append(piece.text)
            scored[index].extend(piece.logprobs)
            prompt[index] = prompt[index] or piece.prompt_logprobs
            last[index] = piece
    return [
        replace(
            last[i], text="".join(parts[i]), logprobs=tuple(scored[i]), prompt_logprobs=prompt[i]
        )
        for i in range(count)
    ]


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


async def choice_pieces(replies: Replies) -> AsyncGenerator[tuple[int, ReplyPiece], None]:
    """The pieces of every choice with its index, as they come. One choice runs
    here; several run each in a task of its own, so that their steps reach the
    engine worker together and ride its batches like concurrent requests.

    Those tasks are system tasks rather than a nursery's: a nursery cannot stay
    open across the yields of a generator (the SSE body is one). They never
    raise: a choice's error comes through the channel and is raised here, and
    leaving (done, error or disconnect) cancels them, which closes their
    replies and so frees their KV caches."""
    if len(replies.generations) == 1:
        async with replies.open(0) as pieces:
            async for piece in pieces:
                yield 0, piece
        return
    send, receive = trio.open_memory_channel[tuple[int, ReplyPiece | Exception]](math.inf)
    scopes = [trio.CancelScope() for _ in replies.generations]
    with send:
        for index, scope in enumerate(scopes):
            trio.lowlevel.spawn_system_task(_run_choice, replies, index, send.clone(), scope)
    try:
        with receive:
            async for index, item in receive:
                if isinstance(item, Exception):
                    raise item
                yield index, item
    finally:
        for scope in scopes:
            scope.cancel()


async def _run_choice(
    replies: Replies,
    index: int,
    send: trio.MemorySendChannel[tuple[int, ReplyPiece | Exception]],
    scope: trio.CancelScope,
) -> None:
    """One choice's pieces into `send` (unbounded: a reply is at most max_tokens)."""
    with send, scope:
        try:
            async with replies.open(index) as pieces:
                async for piece in pieces:
                    send.send_nowait((index, piece))
        except Exception as exc:
            # The reader may be gone already (it cancels us as it leaves).
            with suppress(trio.BrokenResourceError):
                send.send_nowait((index, exc))


def stream_response(
    replies: Replies, shape: ResponseShape, include_usage: bool, slot: Slot
) -> Response:
    """The SSE response; its body owns `slot` and frees it when the stream ends."""
    events = stream_events(replies, shape, include_usage, slot)
    slot.release_with(events)  # in case the server drops the body unread
    response = Response(events, content_type="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"  # reverse proxies: do not buffer
    response.timeout = None
    return response


async def stream_events(
    replies: Replies, shape: ResponseShape, include_usage: bool, slot: Slot
) -> AsyncIterator[bytes]:
    """The SSE body. A client that disconnects cancels this iterator (quart-trio
    cancels the request's task on `http.disconnect`), and `aclosing` then frees
    the request's KV cache at once; `slot` is freed however the stream ends."""
    with slot:
        if shape.chat:
            for index in range(len(replies.generations)):
                yield sse(shape.chunk({"role": "assistant", "content": ""}, None, index=index))
        tokens = [0] * len(replies.generations)
        try:
            echoes = [replies.echo] * len(replies.generations)  # each choice's goes first
            async with aclosing(choice_pieces(replies)) as pieces:
                async for index, piece in pieces:
                    tokens[index] = piece.token_count
                    text = (echoes[index] or "") + piece.text
                    scores = replies.score(index)
                    logprobs = None
                    if text or (scores and (piece.logprobs or piece.end)):
                        echoes[index] = None
                        logprobs = scores.format(piece) if scores else None
                    for event in shape.piece_chunks(piece, index, text, logprobs):
                        yield sse(event)
        except Exception as exc:
            # The 200 status is already sent: report the failure the way OpenAI's
            # stream does, as an error event, and still end the stream cleanly.
            log.exception("generation %s failed mid-stream", replies.generations[0].request_id)
            code = exc.code if isinstance(exc, UnavailableError) else None
            yield sse(
                APIError(500, f"generation failed: {exc}", type="server_error", code=code).body()
            )
        else:
            if include_usage:
                yield sse(shape.usage_chunk(sum(tokens)))
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

    def whole(
        self, reply: ReplyPiece, logprobs: dict[str, Any] | None = None, index: int = 0
    ) -> dict[str, Any]:
        """A whole reply whose one choice is choice `index` (see `complete` for n > 1)."""
        finish = reply.finish_reason
        choice: dict[str, Any] = {"index": index, "finish_reason": finish, "logprobs": logprobs}
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": reply.text}
            if reply.calls:
                # OpenAI's shape: no content (null) when the reply is only calls.
                message["content"] = reply.text or None
                calls = [self.tool_call(c, i, index) for i, c in enumerate(reply.calls)]
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

    def tool_call(self, call: ToolCall, index: int, choice: int = 0) -> dict[str, Any]:
        """Call `index` of choice `choice` as OpenAI shows it (`index` matters only
        in stream deltas). Its id is unique within the response: the choices of
        one request would otherwise give their first calls the same id."""
        request_id = self.id.removeprefix("chatcmpl-")
        return {
            "index": index,
            "id": call_id(f"{request_id}.{choice}" if choice else request_id, index),
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments_json()},
        }

    def piece_chunks(
        self, piece: ReplyPiece, index: int, text: str, logprobs: dict[str, Any] | None
    ) -> list[dict[str, Any]]:
        """The stream chunks of choice `index`'s piece: its `text` (the piece's,
        or an echo before it) with its `logprobs`, each call, its finish."""
        chunks = []
        if text or logprobs is not None:
            content = {"content": text}
            chunks.append(self.chunk(content, None, text=text, logprobs=logprobs, index=index))
        for number, call in enumerate(piece.calls):
            calls = {"tool_calls": [self.tool_call(call, number, index)]}
            chunks.append(self.chunk(calls, None, index=index))
        if piece.finish_reason:
            chunks.append(self.chunk({}, piece.finish_reason, text="", index=index))
        return chunks

    def chunk(
        self,
        delta: dict[str, Any],
        finish: str | None,
        text: str = "",
        logprobs: dict[str, Any] | None = None,
        index: int = 0,
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": index, "finish_reason": finish, "logprobs": logprobs}
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
