"""The node: one model, one engine, and the generation loop around them.

A node owns its engine worker task. `generate` runs one request: the prompt
is prefilled, then tokens are sampled one at a time until an end token, a stop
string or the token budget, streaming text out as it goes. Each request's KV
cache is released when it ends, however it ends (finished, failed, cancelled).
"""

from __future__ import annotations

import logging
import platform
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil
import trio

from exoquic.engines.base import Engine
from exoquic.engines.sampling import Sampler
from exoquic.models.config import ModelConfig
from exoquic.models.shard import Shard
from exoquic.models.source import ModelSource, resolve_source
from exoquic.models.tokenizer import Tokenizer
from exoquic.orchestration.generation import (
    ContextLengthError,
    GenerationChunk,
    GenerationRequest,
)
from exoquic.orchestration.stops import StopMatcher
from exoquic.orchestration.worker import EngineWorker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeSettings:
    model: str
    engine: str = "auto"
    max_context: int = 2048
    max_batch: int = 16


class Node:
    def __init__(
        self,
        model_id: str,
        config: ModelConfig,
        tokenizer: Tokenizer,
        worker: EngineWorker,
        max_context: int,
    ) -> None:
        self.model_id = model_id
        self.config = config
        self.tokenizer = tokenizer
        self.worker = worker
        self.max_context = max_context
        self.started_at = time.time()
        self._active: set[str] = set()
        self.node_id = "local"

    @property
    def engine(self) -> Engine:
        return self.worker.engine

    @property
    def active_requests(self) -> int:
        return len(self._active)

    def topology(self) -> dict[str, Any]:
        """What `GET /v1/topology` shows: this node alone until it joins a ring."""
        memory = psutil.virtual_memory()
        return {
            "model": self.model_id,
            "plan_version": None,
            "nodes": [
                {
                    "id": self.node_id,
                    "name": platform.node(),
                    "self": True,
                    "engine": self.engine.name,
                    "memory": {"total": memory.total, "available": memory.available},
                    "layers": [0, self.config.num_layers - 1],
                }
            ],
        }

    def serves(self, model: str) -> bool:
        """Whether `model` (an id or alias from a request) names the loaded model."""
        from exoquic.models.registry import canonical_model_id

        return canonical_model_id(model) == self.model_id

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Render the model's chat template and tokenize it."""
        return self.tokenizer.encode(self.tokenizer.apply_chat_template(messages))

    def check_fits(self, prompt_tokens: int) -> None:
        if prompt_tokens >= self.max_context:
            raise ContextLengthError(
                f"the prompt is {prompt_tokens} tokens; this node's context is "
                f"{self.max_context} tokens and must leave room for at least one reply token"
            )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream the reply to one request (use under `contextlib.aclosing`)."""
        self.check_fits(len(request.prompt_tokens))
        budget = self.max_context - len(request.prompt_tokens)
        if request.max_tokens is not None:
            budget = min(budget, request.max_tokens)
        self._active.add(request.request_id)
        try:
            async for chunk in self._decode(request, budget):
                yield chunk
        finally:
            self._active.discard(request.request_id)
            with trio.CancelScope(shield=True):
                await self.worker.call(lambda: self.engine.release(request.request_id))

    async def _decode(
        self, request: GenerationRequest, budget: int
    ) -> AsyncIterator[GenerationChunk]:
        sampler = Sampler(request.sampling)
        text = self.tokenizer.stream_decoder()
        stops = StopMatcher(request.stop)
        end_tokens = self.tokenizer.eos_token_ids
        inputs = np.asarray(request.prompt_tokens, dtype=np.int32)
        for produced in range(1, budget + 1):
            logits = await self.worker.forward(request.request_id, inputs)
            token = sampler.sample(logits, produced - 1)
            if token in end_tokens:
                yield GenerationChunk(
                    stops.push(text.flush()) + stops.flush(), produced - 1, "stop"
                )
                return
            piece = stops.push(text.push(token))
            if stops.stopped:
                yield GenerationChunk(piece, produced, "stop")
                return
            if produced == budget:
                yield GenerationChunk(
                    piece + stops.push(text.flush()) + stops.flush(), produced, "length"
                )
                return
            if piece:
                yield GenerationChunk(piece, produced)
            inputs = np.asarray([token], dtype=np.int32)


def new_request_id() -> str:
    return uuid.uuid4().hex


@asynccontextmanager
async def open_node(settings: NodeSettings) -> AsyncIterator[Node]:
    """Load the model's tokenizer and weights, start the engine worker, yield the node."""
    from exoquic.engines.registry import create_engine
    from exoquic.engines.selection import pick_engine

    source: ModelSource = resolve_source(settings.model)
    config = source.load_config()
    tokenizer = source.load_tokenizer()
    engine_name = pick_engine(settings.engine)
    max_context = min(settings.max_context, config.max_context)
    engine = create_engine(engine_name, max_context=max_context)
    shard = Shard.whole(source.model_id, config.num_layers)
    started = time.perf_counter()
    weights = await trio.to_thread.run_sync(source.load_shard, shard)
    await trio.to_thread.run_sync(engine.load, weights)
    del weights
    log.info(
        "loaded %s layers %d-%d on %s in %.1fs",
        source.model_id,
        shard.start_layer,
        shard.end_layer,
        engine_name,
        time.perf_counter() - started,
    )
    worker = EngineWorker(engine, max_batch=settings.max_batch)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        yield Node(source.model_id, config, tokenizer, worker, max_context)
        nursery.cancel_scope.cancel()
