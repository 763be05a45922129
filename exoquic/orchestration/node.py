"""The node: one model, one engine, and the generation loop around them.

A node is always part of a ring (see `ring.py`); alone, it is a ring of one
with no network at all. `generate` runs one request as its origin: the ring
produces tokens step by step, and the node turns them into text, applying end
tokens, stop strings and the token budget, streaming as it goes. KV caches
are released on every node of the plan when the request ends, however it
ends (finished, failed, cancelled).
"""

from __future__ import annotations

import json
import logging
import platform
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing, asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import trio

from exoquic import defaults
from exoquic.engines.base import Engine
from exoquic.engines.constraints import ConstraintCompiler
from exoquic.engines.logprobs import TokenLogprob
from exoquic.identity.keys import Identity
from exoquic.machine import probe_capabilities
from exoquic.models.config import ModelConfig
from exoquic.models.generation_defaults import FALLBACK_DEFAULTS, GenerationDefaults
from exoquic.models.shard import Shard
from exoquic.models.sizes import BYTES_PER_WEIGHT, estimated_part_sizes
from exoquic.models.source import ModelSource
from exoquic.models.tokenizer import Tokenizer
from exoquic.models.weights import ShardWeights
from exoquic.orchestration.cluster import Cluster, ClusterSettings, open_cluster, open_ring
from exoquic.orchestration.generation import (
    ContextLengthError,
    FinishReason,
    GenerationChunk,
    GenerationRequest,
    RequestError,
    UnavailableError,
)
from exoquic.orchestration.planning import Member, PlanState
from exoquic.orchestration.stops import StopMatcher
from exoquic.orchestration.topology_view import topology_report
from exoquic.orchestration.worker import EngineWorker
from exoquic.topology import DeviceCapabilities, ModelRequirements

if TYPE_CHECKING:
    from exoquic.download.ensure import NodeModel
    from exoquic.orchestration.network import Network

log = logging.getLogger(__name__)
T = TypeVar("T")

# A prompt longer than context * longest vocabulary entry * this many characters
# cannot fit the context, whatever its text: it is refused before tokenizing.
# The margin covers normalizers that shrink text before tokenizing.
PROMPT_CHARS_MARGIN = 2
# Threads that render chat templates and tokenize at once. Their own limit, so a
# flood of large prompts waits here and never takes the threads everything
# else borrows from trio's default pool.
PROMPT_THREADS = 2


@dataclass(frozen=True)
class NodeSettings:
    model: str
    engine: str = "auto"
    max_context: int = defaults.MAX_CONTEXT
    weights: str = "auto"  # what safetensors matrices become (models.hf_loader.HF_WEIGHTS)
    max_batch: int = 16
    # Warm the engine up before serving; a one-shot answer skips it, since its one
    # request makes the steps it needs and nothing else (see Engine.warm_up).
    warm_up: bool = True


class Usage(Protocol):
    """Told when each of a node's generations starts and ends (keep-alive, see residency.py)."""

    def started(self) -> None: ...

    def finished(self) -> None: ...


class Node:
    """A model served by this node, alone or as one node of a ring.

    Without `cluster` the node is alone and `worker`'s engine must already
    hold the whole model (a ring of one, no network).
    """

    def __init__(
        self,
        model_id: str,
        config: ModelConfig,
        tokenizer: Tokenizer,
        worker: EngineWorker,
        max_context: int,
        cluster: Cluster | None = None,
        defaults: GenerationDefaults = FALLBACK_DEFAULTS,
        requirements: ModelRequirements | None = None,
    ) -> None:
        self.model_id = model_id
        # The parts' sizes the plan counts; a test's node without them gets an estimate.
        self.requirements = requirements or estimated_requirements(model_id, config)
        self.config = config
        self.defaults = defaults  # for requests that name no sampling or max_tokens
        self.tokenizer = tokenizer
        self.max_context = max_context
        self.started_at = time.time()
        self.prompt_char_limit = max_context * tokenizer.longest_token_chars * PROMPT_CHARS_MARGIN
        self._prompt_threads = trio.CapacityLimiter(PROMPT_THREADS)
        if cluster is None:
            # A throwaway id: a node alone never shows it to anyone but itself.
            node_id = Identity.generate().node_id
            member = Member(node_id, platform.node() or "node", _probe(worker.engine.name))
            cluster = Cluster.alone(worker, model_id, config.num_layers, member)
        self.cluster = cluster
        self.usage: Usage | None = None  # set by the ModelSet that holds the node
        # Whichever node samples a request follows its grammar with this node's tokenizer.
        self.constraints = cluster.ring.constraints = ConstraintCompiler(tokenizer)

    @property
    def node_id(self) -> str:
        return self.cluster.node_id

    @property
    def engine(self) -> Engine:
        return self.cluster.worker.engine

    @property
    def active_requests(self) -> int:
        """Requests this node originates now (the ring's count)."""
        return self.cluster.ring.live_requests

    @property
    def kept_caches(self) -> int:
        """Finished requests' KV caches kept for later turns (the prefix cache)."""
        return self.cluster.ring.kept_caches

    def topology(self) -> dict[str, Any]:
        """What `GET /v1/topology` shows: the nodes, their layers, the plan, this node's stats."""
        return topology_report(
            self.cluster, self.model_id, self.config.num_layers, self.requirements
        )

    def serves(self, model: str) -> bool:
        """Whether `model` (an id or alias from a request) names the loaded model."""
        from exoquic.models.registry import canonical_model_id

        return canonical_model_id(model) == self.model_id

    async def encode_chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        reply_prefix: str = "",
    ) -> list[int]:
        """Render the model's chat template and tokenize it, off the event loop.

        `tools` go to the template; `reply_prefix` is text the assistant's turn
        starts with (the opening of a forced tool call). Raises
        ContextLengthError, before any work, when the messages are too long for
        the context whatever they say; ChatTemplateError when the template
        rejects them.
        """
        self._check_prompt_chars(sum(map(_message_chars, messages)) + _json_chars(tools))

        def render_and_encode() -> list[int]:
            text = self.tokenizer.apply_chat_template(messages, tools=tools)
            return self.tokenizer.encode(text + reply_prefix)

        return await self._off_loop(render_and_encode)

    async def encode_text(self, text: str) -> list[int]:
        """Tokenize a plain prompt off the event loop (ContextLengthError as `encode_chat`)."""
        self._check_prompt_chars(len(text))
        return await self._off_loop(lambda: self.tokenizer.encode(text))

    def _check_prompt_chars(self, chars: int) -> None:
        if chars > self.prompt_char_limit:
            raise ContextLengthError(
                f"the prompt is {chars} characters; this node's context of {self.max_context} "
                f"tokens cannot hold more than {self.prompt_char_limit} characters of text"
            )

    async def prepare_grammars(self) -> None:
        """Prepare, in a thread, what following a grammar takes (once, ~0.5 s): a
        node alone, which samples its own requests, then never stalls its loop."""
        await self._off_loop(lambda: self.constraints.ll_tokenizer)

    async def _off_loop(self, work: Callable[[], T]) -> T:
        """Run CPU-heavy prompt work in a thread: on the loop, a multi-megabyte
        prompt would stall every stream and the ring's keep-alives for seconds."""
        return await trio.to_thread.run_sync(work, limiter=self._prompt_threads)

    def check_request(self, prompt_tokens: int, max_tokens: int | None = None) -> None:
        """Refuse a request the node cannot take now (the one place requests are
        checked; the API calls it before admitting one, `generate` again):

        - RequestError: an empty prompt;
        - ContextLengthError: a prompt that leaves no room in the context;
        - UnavailableError: a cluster that cannot hold the model;
        - ContextLengthError: with `max_tokens` (as a client asked for it), a
          reply that cannot fit. A default max_tokens is cut to the room left.
        """
        if prompt_tokens == 0:
            raise RequestError("the prompt is empty")
        if prompt_tokens >= self.max_context:
            raise ContextLengthError(
                f"the prompt is {prompt_tokens} tokens; this node's context is "
                f"{self.max_context} tokens and must leave room for at least one reply token"
            )
        reason = self.cluster.plans.state.unavailable
        if reason is not None:
            raise UnavailableError(reason)
        if max_tokens is not None and prompt_tokens + max_tokens > self.max_context:
            raise ContextLengthError(
                f"this node's context is {self.max_context} tokens, but {prompt_tokens} prompt "
                f"tokens plus max_tokens {max_tokens} ask for {prompt_tokens + max_tokens}; "
                "lower max_tokens or shorten the prompt",
                param="max_tokens",
            )

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream the reply to one request (use under `contextlib.aclosing`).

        Raises UnavailableError when the ring cannot serve it.
        """
        self.check_request(len(request.prompt_tokens))
        # A max_tokens the client did not ask for (the model's default) is cut to the room left.
        budget = self.max_context - len(request.prompt_tokens)
        if request.max_tokens is not None:
            budget = min(budget, request.max_tokens)
        usage = self.usage
        if usage is not None:
            usage.started()
        try:
            async for chunk in self._decode(request, budget):
                yield chunk
        finally:
            if usage is not None:
                usage.finished()

    async def _decode(
        self, request: GenerationRequest, budget: int
    ) -> AsyncIterator[GenerationChunk]:
        text = self.tokenizer.stream_decoder()
        stops = StopMatcher(request.stop)
        end_tokens = self.tokenizer.eos_token_ids
        results = self.cluster.ring.generate_results(
            request.request_id,
            list(request.prompt_tokens),
            request.sampling,
            budget,
            request.logprobs,
            request.score_prompt,
        )
        produced = 0
        scored: list[TokenLogprob] = []  # since the last chunk
        prompt: tuple[TokenLogprob, ...] = ()  # until the first chunk takes them
        async with aclosing(results):
            async for result in results:
                token = result.token_id
                produced += 1
                prompt = prompt or result.prompt
                if token in end_tokens:
                    piece = stops.push(text.flush()) + stops.flush()
                    yield GenerationChunk(
                        piece, produced - 1, "stop", tuple(scored), prompt, result.scored
                    )
                    return
                if result.scored is not None:
                    scored.append(result.scored)
                piece = stops.push(text.push(token))
                finish: FinishReason | None = "stop" if stops.stopped else None
                if produced == budget and not finish:
                    piece += stops.push(text.flush()) + stops.flush()
                    finish = "length"
                if piece or finish:
                    yield GenerationChunk(piece, produced, finish, tuple(scored), prompt)
                    if finish:
                        return
                    scored, prompt = [], ()


def _message_chars(message: dict[str, Any]) -> int:
    return len(message["content"]) + _json_chars(message.get("tool_calls"))


def _json_chars(value: Any) -> int:
    """Characters of `value` as JSON, 0 for nothing (tools and tool calls)."""
    return len(json.dumps(value)) if value else 0


def new_request_id() -> str:
    return uuid.uuid4().hex


def model_requirements(source: ModelSource, config: ModelConfig) -> ModelRequirements:
    """Memory the model's parts take once loaded: the registry's sizes for a bundled
    GGUF, else the source's own (a GGUF's tensor sizes; a safetensors checkpoint's
    matrices at the size they are quantized to on load)."""
    bundled = _bundled_requirements(source.model_id)
    if bundled is not None:
        return bundled
    sizes = source.part_sizes(config)
    # A tied head is the embedding matrix: one node holding both holds it once.
    shared = min(sizes.embed_bytes, sizes.head_bytes) if config.tie_word_embeddings else 0
    return ModelRequirements(
        source.model_id,
        config.num_layers,
        sizes.bytes_per_layer,
        sizes.embed_bytes,
        sizes.head_bytes,
        shared,
    )


def _bundled_requirements(model_id: str) -> ModelRequirements | None:
    from exoquic.models.registry import find_model

    entry = find_model(model_id)
    if entry is None or not entry.bundled_package:
        return None
    return ModelRequirements(
        entry.id, entry.num_layers, entry.bytes_per_layer, entry.embed_bytes, entry.embed_bytes
    )


def estimated_requirements(model_id: str, config: ModelConfig) -> ModelRequirements:
    """Sizes from the config's shapes alone, every matrix as Q8_0 (or the
    registry's, for the bundled model)."""
    bundled = _bundled_requirements(model_id)
    if bundled is not None:
        return bundled
    sizes = estimated_part_sizes(config, BYTES_PER_WEIGHT["q8_0"])
    return ModelRequirements(
        model_id, config.num_layers, sizes.bytes_per_layer, sizes.embed_bytes, sizes.head_bytes
    )


def _probe(engine: str, memory_limit: int | None = None) -> DeviceCapabilities:
    capabilities = probe_capabilities(engine)
    if memory_limit is None:
        return capabilities
    limit = max(1, memory_limit)
    return replace(
        capabilities,
        total_memory=min(capabilities.total_memory, limit),
        available_memory=min(capabilities.available_memory, limit),
    )


@dataclass(frozen=True)
class OnDemandRing:
    """Where a model loaded on demand joins a ring: the node's network, the
    memory this node offers it (net of the models it holds already), and
    whether this node wants the model itself (see `Demand`)."""

    network: Network
    capabilities: DeviceCapabilities
    wanted: bool = True


@asynccontextmanager
async def open_node(
    settings: NodeSettings,
    cluster_settings: ClusterSettings | None = None,
    model: NodeModel | None = None,
    on_demand: OnDemandRing | None = None,
) -> AsyncIterator[Node]:
    """Start the engine worker and yield the node.

    Without `cluster_settings` or `on_demand`: load the whole model and serve
    alone (no network). With `cluster_settings`: open the network and join the
    ring; this node's layers are loaded once the ring has agreed on a plan (see
    `open_cluster`). With `on_demand`: the same in a ring of its own on a
    network already open. `model`, when given, is the model already resolved
    (a cached one loaded on demand); else `settings.model` is.
    """
    from exoquic.download.ensure import prepare_model
    from exoquic.engines.registry import create_engine
    from exoquic.engines.selection import pick_engine

    if model is None:
        model = await prepare_model(settings.model, weights=settings.weights)
    source: ModelSource = model.source
    config = source.load_config()
    tokenizer = source.load_tokenizer()
    defaults = source.load_generation_defaults()
    engine_name = pick_engine(settings.engine)
    max_context = min(settings.max_context, config.max_context)
    engine = create_engine(engine_name, max_context=max_context)
    worker = EngineWorker(engine, max_batch=settings.max_batch)
    requirements = model_requirements(source, config)

    def node(cluster: Cluster | None) -> Node:
        return Node(
            source.model_id,
            config,
            tokenizer,
            worker,
            max_context,
            cluster,
            defaults,
            requirements,
        )

    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        if on_demand is not None:
            network = on_demand.network
            me = Member(network.node_id, network.name, on_demand.capabilities)
            state = PlanState(me, requirements, network.settings.memory_fraction)
            ring = open_ring(
                network, state, worker, model.load_shard, on_demand=True, wanted=on_demand.wanted
            )
            async with ring as cluster:
                with _stopping_on_exit(worker):
                    yield node(cluster)
        elif cluster_settings is None:
            with _stopping_on_exit(worker):
                await _load_whole(
                    source.model_id, model.load_shard, config, worker, settings.warm_up
                )
                yield node(None)
        else:
            node_id, name = cluster_settings.identity.node_id, cluster_settings.name
            me = Member(node_id, name, _probe(engine_name, cluster_settings.memory_limit))
            state = PlanState(me, requirements, cluster_settings.memory_fraction)
            async with open_cluster(cluster_settings, state, worker, model.load_shard) as cluster:
                with _stopping_on_exit(worker):
                    yield node(cluster)
        nursery.cancel_scope.cancel()


@contextmanager
def _stopping_on_exit(worker: EngineWorker) -> Iterator[None]:
    """Leaving the block (the node stops) releases whoever waits on the engine:
    a load still running must not hold the node's exit."""
    try:
        yield
    finally:
        worker.stop()


async def _load_whole(
    model_id: str,
    load_shard: Callable[[Shard], ShardWeights],
    config: ModelConfig,
    worker: EngineWorker,
    warm_up: bool = True,
) -> None:
    shard = Shard.whole(model_id, config.num_layers)
    started = time.perf_counter()
    weights = await trio.to_thread.run_sync(load_shard, shard)
    await worker.load(weights, warm_up)
    log.info(
        "loaded %s on %s%s in %.1fs",
        model_id,
        worker.engine.name,
        " and warmed it up" if warm_up else "",
        time.perf_counter() - started,
    )
