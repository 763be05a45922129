"""`GET /metrics`: the node in Prometheus' text format (prometheus_client).

Two kinds of series: what the API itself observes (requests by endpoint and
status, prompt and completion tokens, time to first token, time between
tokens), kept in this app's own registry; and the node's existing state (plan
version, peers, KV caches, the prefix cache, admission queue, ring step and
link counters), read at scrape time by `NodeCollector` from the objects that
own it, never copied.
The route follows the API's auth rules: it needs the key when one is set.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from exoquic.api.admission import Admission
from exoquic.orchestration.generation import GenerationChunk
from exoquic.orchestration.node import Node

# Seconds; from a fast local first token to a long prompt's prefill across a ring.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
INTER_TOKEN_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


class ApiMetrics:
    """The app's registry: the API's own series plus a collector over `node`."""

    def __init__(self, node: Node, admission: Admission) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "exoquic_http_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter(
            "exoquic_prompt_tokens", "Prompt tokens of generations", ["endpoint"], registry=r
        )
        self.completion_tokens = Counter(
            "exoquic_completion_tokens", "Tokens generated", ["endpoint"], registry=r
        )
        self.first_token = Histogram(
            "exoquic_time_to_first_token_seconds",
            "From the generation's start to its first text",
            ["endpoint"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.inter_token = Histogram(
            "exoquic_inter_token_seconds",
            "Time between generated tokens",
            ["endpoint"],
            buckets=INTER_TOKEN_BUCKETS,
            registry=r,
        )
        r.register(NodeCollector(node, admission))

    def meter(self, endpoint: str, prompt_tokens: int) -> GenerationMeter:
        return GenerationMeter(self, endpoint, prompt_tokens)


class GenerationMeter:
    """Times one generation's chunks and counts its tokens once it ends."""

    def __init__(self, metrics: ApiMetrics, endpoint: str, prompt_tokens: int) -> None:
        self.metrics = metrics
        self.endpoint = endpoint
        self.prompt_tokens = prompt_tokens
        self.inter_token = metrics.inter_token.labels(endpoint)  # looked up once per request
        self.started = time.perf_counter()
        self.last: float | None = None
        self.tokens = 0

    def chunk(self, token_count: int) -> None:
        now = time.perf_counter()
        new = token_count - self.tokens
        if self.last is None:
            self.metrics.first_token.labels(self.endpoint).observe(now - self.started)
        elif new > 0:
            # A chunk may carry several tokens (held-back text): spread its time.
            per_token = (now - self.last) / new
            for _ in range(new):
                self.inter_token.observe(per_token)
        self.last, self.tokens = now, max(self.tokens, token_count)

    def done(self) -> None:
        self.metrics.prompt_tokens.labels(self.endpoint).inc(self.prompt_tokens)
        self.metrics.completion_tokens.labels(self.endpoint).inc(self.tokens)


async def metered(
    chunks: AsyncGenerator[GenerationChunk, None], meter: GenerationMeter | None
) -> AsyncGenerator[GenerationChunk, None]:
    """`chunks` passed through `meter` (closed when this is closed)."""
    async with aclosing(chunks):
        if meter is None:
            async for chunk in chunks:
                yield chunk
            return
        try:
            async for chunk in chunks:
                meter.chunk(chunk.token_count)
                yield chunk
        finally:
            meter.done()


class NodeCollector(Collector):
    """The node's state at scrape time, read from its owners."""

    def __init__(self, node: Node, admission: Admission) -> None:
        self.node = node
        self.admission = admission

    def collect(self) -> Iterator[Metric]:
        yield from self._plan()
        yield from self._engine()
        yield from self._admission()
        yield from self._ring()

    def _plan(self) -> Iterator[Metric]:
        state = self.node.cluster.plans.state
        adopted = state.adopted
        if adopted is not None:
            yield _gauge("exoquic_plan_version", "Version of the plan this node adopted",
                         adopted.plan.version)  # fmt: skip
        peers = [m for m in state.members() if m.node_id != self.node.node_id]
        yield _gauge("exoquic_peers", "Live peers in this node's cluster", len(peers))
        yield _gauge("exoquic_serving", "1 when the ring can serve requests",
                     int(state.unavailable is None))  # fmt: skip

    def _engine(self) -> Iterator[Metric]:
        engine = self.node.engine
        yield _gauge("exoquic_active_requests", "Generations this node originates now",
                     self.node.active_requests)  # fmt: skip
        yield _gauge("exoquic_kv_caches", "Requests holding a KV cache in this node's engine",
                     engine.active_requests())  # fmt: skip
        cache_bytes = getattr(engine, "cache_bytes", None)
        if cache_bytes is not None:
            try:
                value = cache_bytes()
            except RuntimeError:  # the engine thread changed its caches mid-sum: skip once
                return
            yield _gauge("exoquic_kv_cache_bytes", "Bytes held by this node's KV caches", value)

    def _admission(self) -> Iterator[Metric]:
        stats = self.admission.statistics()
        yield _gauge("exoquic_admission_in_flight", "Generations admitted and running",
                     stats["in_flight"])  # fmt: skip
        yield _gauge("exoquic_admission_queue_depth", "Requests waiting for a slot",
                     stats["waiting"])  # fmt: skip
        refused = CounterMetricFamily(
            "exoquic_admission_refused", "Requests refused with 429", value=stats["refused"]
        )
        yield refused
        if stats["limit"] is not None:
            yield _gauge("exoquic_admission_limit", "Generations allowed at once", stats["limit"])

    def _ring(self) -> Iterator[Metric]:
        stats = self.node.cluster.statistics()
        ring, links = stats["ring"], stats["links"]
        yield SummaryMetricFamily(
            "exoquic_ring_step_seconds",
            "Round trip of a step this node originated, through every hop of the ring",
            count_value=ring["steps"],
            sum_value=ring["step_seconds"],
        )
        yield SummaryMetricFamily(
            "exoquic_forward_seconds",
            "Engine time of the forward passes this node ran (its hop)",
            count_value=ring["forwards"],
            sum_value=ring["compute_seconds"],
        )
        for name, help_text in (
            ("requests", "Requests this node originated into the ring"),
            ("replays", "Requests replayed after a node failed"),
            ("failed_requests", "Requests the ring failed"),
            ("prefix_hits", "Requests this node originated that started from a kept prefix"),
            ("prefix_misses", "Of those, requests a node had evicted the prefix of"),
            ("reused_positions", "Prompt positions such requests did not send"),
        ):
            yield CounterMetricFamily(f"exoquic_ring_{name}", help_text, value=ring[name])
        yield from _prefix_cache(ring["prefix_cache"])
        for name, help_text in (
            ("messages_sent", "Messages sent to peers"),
            ("messages_received", "Messages received from peers"),
            ("bytes_sent", "Bytes sent to peers"),
            ("bytes_received", "Bytes received from peers"),
            ("send_seconds", "Time spent waiting for links to take messages"),
        ):
            yield CounterMetricFamily(f"exoquic_link_{name}", help_text, value=links[name])


def _prefix_cache(kept: dict[str, int]) -> Iterator[Metric]:
    """This node's store of finished requests' caches (orchestration/prefix.py)."""
    yield _gauge("exoquic_prefix_cache_bytes", "Bytes of KV caches kept for later requests",
                 kept["bytes"])  # fmt: skip
    yield _gauge("exoquic_prefix_cache_budget_bytes", "The prefix cache's budget (--prefix-cache)",
                 kept["budget"])  # fmt: skip
    yield _gauge("exoquic_prefix_cache_entries", "Requests whose caches are kept", kept["entries"])
    for name, help_text in (
        ("hits", "Requests that copied a kept prefix on this node"),
        ("misses", "Requests whose kept prefix this node no longer held"),
        ("evicted", "Kept caches evicted to stay within the budget"),
        ("reused_positions", "Positions copied from kept caches instead of computed"),
    ):
        yield CounterMetricFamily(f"exoquic_prefix_cache_{name}", help_text, value=kept[name])


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)
