"""Ollama's API: `/api/chat`, `/api/generate`, `/api/tags`, `/api/show`, `/api/ps`,
`/api/version`, `/api/pull`, so Ollama clients (and Open WebUI's Ollama connection) work unchanged.

Requests are validated by the OpenAI code paths (see `ollama_schemas`) and
generated the same way; replies stream as NDJSON, one object per line, the
last with `done: true`, the finish reason and Ollama's counters and durations.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import trio
from quart import Blueprint, Response

from exoquic.api.admission import Slot
from exoquic.api.errors import APIError
from exoquic.api.logprobs import TokenTexts, chat_logprobs
from exoquic.api.metrics import GenerationMeter
from exoquic.api.ollama_schemas import (
    LOGPROB_FIELDS,
    OLLAMA_VERSION,
    Timings,
    chat_body,
    generate_body,
    model_digest,
    model_name,
    parameter_size,
    timestamp,
    tool_calls,
)
from exoquic.api.openai_routes import (
    admission,
    generation_meter,
    json_body,
    model_set,
    new_generation,
    node,
    not_found,
    open_reply,
    serving_for,
    take_keep_alive,
    tokenized,
    with_model_defaults,
)
from exoquic.api.pulls import current_pulls, error_status, progress_lines, wait_for
from exoquic.api.schemas import (
    CompletionParams,
    chat_logprobs_count,
    parse_chat_request,
    parse_text_request,
    with_response_format,
)
from exoquic.api.tool_calls import ToolCall
from exoquic.api.tools import ReplyPiece, ToolCalling
from exoquic.download.errors import DownloadError
from exoquic.engines.logprobs import TokenLogprob
from exoquic.models.config import ModelConfig
from exoquic.models.errors import ModelError
from exoquic.models.generation_defaults import GenerationDefaults
from exoquic.models.registry import find_model
from exoquic.orchestration.catalog import CatalogEntry
from exoquic.orchestration.generation import GenerationRequest, UnavailableError
from exoquic.orchestration.modelset import ModelNotFoundError
from exoquic.orchestration.node import Node

log = logging.getLogger(__name__)
blueprint = Blueprint("ollama", __name__)
# What Ollama shows for a model kept forever (the default model, keep_alive -1).
NEVER_EXPIRES = "2318-01-01T00:00:00Z"


class OllamaShape:
    """Builds `/api/chat` (`message`) or `/api/generate` (`response`) objects."""

    def __init__(
        self, model: str, chat: bool, prompt_tokens: int, tokenizer: TokenTexts | None = None
    ) -> None:
        self.model = model
        self.chat = chat
        self.prompt_tokens = prompt_tokens
        self.tokenizer = tokenizer  # set when the request asked for logprobs
        self.started = time.perf_counter()
        self.first_token: float | None = None

    def piece(
        self, text: str, calls: tuple[ToolCall, ...] = (), scored: Sequence[TokenLogprob] = ()
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "created_at": timestamp(time.time())}
        if self.tokenizer is not None and scored:
            # Ollama's entries are OpenAI's chat ones: token, logprob, bytes, top_logprobs.
            out["logprobs"] = chat_logprobs(self.tokenizer, scored)["content"]
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = tool_calls(calls)
            out["message"] = message
        else:
            out["response"] = text
        return {**out, "done": False}

    def done(
        self,
        text: str,
        last: ReplyPiece,
        calls: tuple[ToolCall, ...] = (),
        scored: Sequence[TokenLogprob] = (),
    ) -> dict[str, Any]:
        # Ollama reports a call's turn as stopped, not as "tool_calls".
        reason = "length" if last.finish_reason == "length" else "stop"
        timings = Timings(
            self.started, self.first_token, time.perf_counter(), self.prompt_tokens,
            last.token_count,
        )  # fmt: skip
        outcome = {"done": True, "done_reason": reason, **timings.as_dict()}
        return {**self.piece(text, calls, scored), **outcome}


@blueprint.post("/api/chat")
async def chat() -> Response:
    raw, keep_alive = take_keep_alive(await json_body())
    body, stream = chat_body(raw)
    serving = await serving_for(body, keep_alive)
    request = parse_chat_request(with_model_defaults(body, serving.defaults), serving.max_context)
    calling = ToolCalling.for_template(request.tools, serving.tokenizer.chat_template)
    messages, tools = calling.render(list(request.messages))
    prompt = await tokenized(serving.encode_chat(messages, tools, calling.prefix), "messages")
    # As Ollama, replies name the model the way the request did.
    shape = OllamaShape(request.params.model, True, len(prompt), scorer(serving, request.params))
    return await reply(serving, prompt, request.params, shape, stream, calling)


@blueprint.post("/api/generate")
async def generate() -> Response:
    raw, keep_alive = take_keep_alive(await json_body())
    asked = generate_body(raw)
    serving = await serving_for(asked.chat_body, keep_alive)
    body = with_model_defaults(asked.chat_body, serving.defaults)
    messages: list[dict[str, Any]] = []
    if asked.raw:
        # A raw prompt is a text completion (no `response_format`); `format` still applies.
        dropped = {"messages", "response_format", *LOGPROB_FIELDS}
        text_body = {k: v for k, v in body.items() if k not in dropped}
        params = parse_text_request({**text_body, "prompt": asked.prompt}).params
        params = replace(params, logprobs=chat_logprobs_count(body))
        params = with_response_format(params, body.get("response_format"))
    else:
        request = parse_chat_request(body, serving.max_context)
        params, messages = request.params, list(request.messages)
    if not asked.prompt:
        # Ollama's way to load a model: an empty prompt (loaded now), and to
        # unload one: an empty prompt with keep_alive 0 (unloaded right after;
        # the default model stays).
        model_set().unreserve(serving)
        shape = OllamaShape(params.model, False, 0)
        reason = "unload" if keep_alive == 0 and serving is not node() else "load"
        return json_response({**shape.piece(""), "done": True, "done_reason": reason})
    if asked.raw:
        prompt = await tokenized(serving.encode_text(asked.prompt), "prompt")
    else:
        prompt = await tokenized(serving.encode_chat(messages), "prompt")
    shape = OllamaShape(params.model, False, len(prompt), scorer(serving, params))
    return await reply(serving, prompt, params, shape, asked.stream, None)


async def reply(
    serving: Node,
    prompt: list[int],
    params: CompletionParams,
    shape: OllamaShape,
    stream: bool,
    calling: ToolCalling | None,
) -> Response:
    generation = new_generation(serving, prompt, params, shape.chat)
    if params.sampling.grammar is not None:  # `format`
        await serving.prepare_grammars()
    meter = generation_meter(len(prompt))
    slot = await admission().admit()
    if stream:
        lines = ndjson_lines(serving, generation, shape, calling, slot, meter)
        slot.release_with(lines)  # in case the server drops the body unread
        response = Response(lines, content_type="application/x-ndjson")
        response.timeout = None
        return response
    with slot:
        parts: list[str] = []
        scored: list[TokenLogprob] = []
        last = ReplyPiece("", 0)
        async for piece in pieces(serving, generation, shape, calling, meter):
            parts.append(piece.text)
            scored.extend(piece.logprobs)
            last = piece
    return json_response(shape.done("".join(parts), last, last.calls, scored))


def scorer(serving: Node, params: CompletionParams) -> TokenTexts | None:
    """The tokenizer that names scored tokens, when the request asked for logprobs."""
    return serving.tokenizer if params.logprobs is not None else None


async def pieces(
    serving: Node,
    generation: GenerationRequest,
    shape: OllamaShape,
    calling: ToolCalling | None,
    meter: GenerationMeter | None,
) -> AsyncIterator[ReplyPiece]:
    """The reply's pieces, noting when the first one came (prompt evaluation's end)."""
    async with open_reply(serving, generation, calling, meter) as replies:
        async for piece in replies:
            if shape.first_token is None:
                shape.first_token = time.perf_counter()
            yield piece


async def ndjson_lines(
    serving: Node,
    generation: GenerationRequest,
    shape: OllamaShape,
    calling: ToolCalling | None,
    slot: Slot,
    meter: GenerationMeter | None,
) -> AsyncIterator[bytes]:
    """The streamed body: a line per piece, then the `done` line (or an
    `{"error": ...}` line if generation fails once the 200 is sent)."""
    with slot:
        try:
            async for piece in pieces(serving, generation, shape, calling, meter):
                if piece.text or piece.logprobs:
                    yield ndjson(shape.piece(piece.text, (), piece.logprobs))
                if piece.calls:  # as Ollama: the calls on a line of their own
                    yield ndjson(shape.piece("", piece.calls))
                if piece.finish_reason is not None:
                    # As Ollama: the last line has no text, only the outcome and counters.
                    yield ndjson(shape.done("", piece))
        except Exception as exc:
            log.exception("generation %s failed mid-stream", generation.request_id)
            yield ndjson({"error": f"generation failed: {exc}"})


def ndjson(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def json_response(obj: dict[str, Any]) -> Response:
    return Response(json.dumps(obj, ensure_ascii=False), content_type="application/json")


# --- models ------------------------------------------------------------------


@blueprint.get("/api/version")
async def version() -> dict[str, Any]:
    return {"version": OLLAMA_VERSION}


@blueprint.get("/api/tags")
async def tags() -> dict[str, Any]:
    """The models this node can serve: loaded, then cached (loaded on demand)."""
    models = model_set()
    loaded = models.loaded_servables()
    entries = [
        {**model_entry(models.node_of(s.model_id)), "modified_at": timestamp(node().started_at)}
        for s in loaded
    ]
    cached = await trio.to_thread.run_sync(models.cached_servables, {s.model_id for s in loaded})
    for s in cached:
        name = ollama_name(s.model_id)
        entries.append(
            {"name": name, "model": name, "size": s.size_bytes or 0,
             "digest": model_digest(s.model_id), "details": {"format": s.format},
             "modified_at": timestamp(node().started_at)}
        )  # fmt: skip
    return {"models": entries}


@blueprint.get("/api/ps")
async def running() -> dict[str, Any]:
    """The loaded models and when each expires, as Ollama lists them, plus (our
    fields) `nodes`: which node holds which layers, `default` (the node's own
    model, never unloaded), `size_needed` (with the KV cache), `running` and
    `load_seconds` (of an on-demand load)."""
    models = []
    for report in model_set().loaded():
        serving = report["node"]
        expires = report["expires_at"]
        models.append(
            {
                **model_entry(serving),
                "expires_at": NEVER_EXPIRES if expires is None else timestamp(expires),
                "size_vram": 0,  # the ring's engines share memory with the host
                "context_length": serving.max_context,
                "default": report["default"],
                "size_needed": report["size_bytes"],
                "running": report["running"],
                "nodes": report["nodes"],
                "load_seconds": report["load_seconds"],
                "kept_for_peers": report["kept_for_peers"],
            }
        )
    return {"models": models}


@blueprint.post("/api/show")
async def show() -> dict[str, Any]:
    """A loaded model as its node has it; a cached one from its files' header,
    config and tokenizer, without loading its weights (showing is not using)."""
    body = await json_body()
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    name = model_name(body)
    models = model_set()
    serving = models.loaded_node(name)
    if serving is not None:
        return describe(loaded_parts(serving))
    entry = models.find_cached(name)
    if entry is None:
        raise not_found(ModelNotFoundError(models.not_found_message(name)))
    if entry.model_id in models.residency:  # another name of a loaded model
        return describe(loaded_parts(models.node_of(entry.model_id)))
    limit = models.node_settings.max_context
    try:
        parts = await trio.to_thread.run_sync(cached_parts, entry, limit, node().started_at)
    except ModelError as exc:  # a cached file that is not a usable model
        raise UnavailableError(f"cannot read {entry.model_id}: {exc}") from exc
    return describe(parts)


@dataclass(frozen=True)
class ModelParts:
    """What `/api/show` tells of a model, from a loaded node or a cached model's files."""

    model_id: str
    config: ModelConfig
    chat_template: str | None
    defaults: GenerationDefaults
    max_context: int  # the context this node would serve it with
    modified_at: float
    format: str = "gguf"


def loaded_parts(serving: Node) -> ModelParts:
    return ModelParts(
        serving.model_id, serving.config, serving.tokenizer.chat_template, serving.defaults,
        serving.max_context, serving.started_at,
    )  # fmt: skip


def cached_parts(entry: CatalogEntry, max_context: int, modified_at: float) -> ModelParts:
    """A cached model's parts, read from its files (blocking: call it from a
    thread); its context is capped at `max_context` as a load would cap it."""
    source = entry.source()
    config = source.load_config()
    return ModelParts(
        entry.model_id, config, source.load_tokenizer().chat_template,
        source.load_generation_defaults(), min(max_context, config.max_context), modified_at,
        "gguf" if entry.kind == "gguf" else "safetensors",
    )  # fmt: skip


def describe(parts: ModelParts) -> dict[str, Any]:
    """Ollama's `/api/show` reply."""
    config = parts.config
    arch = config.architecture
    defaults = parts.defaults
    return {
        "modelfile": f"# exoquic serves {parts.model_id}; it has no Modelfile\n",
        "parameters": f"temperature {defaults.temperature}\ntop_p {defaults.top_p}\n"
        f"top_k {defaults.top_k}\nnum_predict {defaults.max_tokens}",
        "template": parts.chat_template or "",
        "details": details(config, parts.format),
        "model_info": {
            "general.architecture": arch,
            "general.parameter_count": parameter_count(config),
            f"{arch}.context_length": parts.max_context,
            f"{arch}.embedding_length": config.hidden_size,
            f"{arch}.block_count": config.num_layers,
            f"{arch}.attention.head_count": config.num_heads,
            f"{arch}.attention.head_count_kv": config.num_kv_heads,
        },
        "capabilities": ["completion", "tools"],
        "modified_at": timestamp(parts.modified_at),
    }


def model_entry(serving: Node) -> dict[str, Any]:
    """The fields `/api/tags` and `/api/ps` share."""
    return {
        "name": ollama_name(serving.model_id),
        "model": ollama_name(serving.model_id),
        "size": serving.requirements.total_bytes,
        "digest": model_digest(serving.model_id),
        "details": details(serving.config),
    }


def ollama_name(model_id: str) -> str:
    """The model's usual Ollama name (`smollm2:135m`) where the registry knows
    one, else its id; requests may use either."""
    entry = find_model(model_id)
    return entry.ollama[0] if entry is not None and entry.ollama else model_id


def details(config: ModelConfig, fmt: str = "gguf") -> dict[str, Any]:
    arch = config.architecture
    return {
        "parent_model": "",
        "format": fmt,
        "family": arch,
        "families": [arch],
        "parameter_size": parameter_size(parameter_count(config)),
        "quantization_level": "",
    }


def parameter_count(c: ModelConfig) -> int:
    """Weights in the model, from its shape."""
    attention = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    layer = attention + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size
    embeddings = c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
    return c.num_layers * layer + embeddings + c.hidden_size


# --- pulls ---------------------------------------------------------------------


@blueprint.post("/api/pull")
async def pull() -> Response:
    """Download a model as `exoquic pull NAME` does, streaming Ollama's progress
    lines (see `exoquic.api.pulls`); one download per model at a time."""
    body = await json_body()
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object")
    name = model_name(body)
    stream = body.get("stream", True)
    if not isinstance(stream, bool):
        raise APIError(400, "'stream' must be a boolean", param="stream")
    try:
        job = current_pulls().start(name)
    except DownloadError as e:  # a name `exoquic pull` would not take either
        raise APIError(400, str(e), param="model", code="model_not_found") from e
    if stream:
        lines = (ndjson(line) async for line in progress_lines(job))
        response = Response(lines, content_type="application/x-ndjson")
        response.timeout = None  # a large model takes a while
        return response
    await wait_for(job)
    if job.error is not None:
        raise APIError(error_status(job.error), str(job.error), type="server_error")
    return json_response({"status": "success"})
