"""Admission control over real HTTP: the limit, the 429 with Retry-After, the
wait queue, and slots freed however a generation ends.

Hypercorn serves the real app in process around the tiny node (real
tokenizer, worker and MLX engine on random weights). The one stand-in is a
gate in front of each generation (`GatedNode`): it holds requests in flight
for exactly as long as a test needs, which a fast tiny model cannot do.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from functools import partial
from typing import Any

import httpx
import openai
import pytest
import trio
import trio.testing
from api_helpers import TINY_CONFIG, error_of, sse_payloads
from hypercorn.config import Config
from hypercorn.trio import serve

from exoquic.api.admission import Admission, retry_after_s
from exoquic.api.app import create_app
from exoquic.api.limits import AdmissionLimits
from exoquic.api.openai_routes import Replies, ResponseShape, stream_events, stream_response
from exoquic.cli.main import build_parser
from exoquic.engines.mlx.engine import MLXEngine
from exoquic.engines.sampling import SamplingParams
from exoquic.models.registry import DEFAULT_MODEL_ID
from exoquic.models.tokenizer import Tokenizer
from exoquic.orchestration.generation import GenerationChunk, GenerationRequest
from exoquic.orchestration.node import Node, new_request_id
from exoquic.orchestration.worker import EngineWorker

CHAT = "/v1/chat/completions"
BODY = {
    "model": DEFAULT_MODEL_ID,
    "messages": [{"role": "user", "content": "Hello"}],
    "max_tokens": 2,
    "temperature": 0,
}
STREAM = {**BODY, "stream": True}


class GatedNode(Node):
    """The tiny node, but each generation first waits for `gate` to open."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.gate = trio.Event()

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        await self.gate.wait()
        async with aclosing(super().generate(request)) as chunks:  # type: ignore[type-var]
            async for chunk in chunks:
                yield chunk


class Served:
    """The app on a real socket, plus the node whose gate the test holds."""

    def __init__(self, url: str, node: GatedNode) -> None:
        self.url = url
        self.node = node
        self.http = httpx.AsyncClient(base_url=url, timeout=30)

    async def health(self) -> dict[str, Any]:
        response = await self.http.get("/health")
        assert response.status_code == 200
        return response.json()

    async def admission(self) -> dict[str, Any]:
        return (await self.health())["admission"]

    async def wait_for(self, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Poll /health until `check(admission)` holds (10 s at most)."""
        with trio.fail_after(10):
            while not check(stats := await self.admission()):
                await trio.sleep(0.01)
        return stats

    async def wait_idle(self) -> dict[str, Any]:
        """Poll /health until no slot is held or awaited and no generation or
        KV cache is live; return the admission counters."""
        with trio.fail_after(10):
            while True:
                health = await self.health()
                stats = health["admission"]
                if (stats["in_flight"], stats["waiting"]) == (0, 0) and (
                    health["active_requests"],
                    health["kv_caches"],
                ) == (0, 0):
                    return stats
                await trio.sleep(0.01)

    def sdk(self, max_retries: int = 0) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=f"{self.url}/v1", api_key="none", max_retries=max_retries
        )


@asynccontextmanager
async def open_served(
    engine: MLXEngine, tokenizer: Tokenizer, limits: AdmissionLimits
) -> AsyncIterator[Served]:
    """Hypercorn on a free loopback port serving the app around a gated tiny node."""
    worker = EngineWorker(engine)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        node = GatedNode(DEFAULT_MODEL_ID, TINY_CONFIG, tokenizer, worker, TINY_CONFIG.max_context)
        app = create_app(node, limits=limits)
        # A trigger that never fires: the nursery's cancel stops the server.
        run_server = partial(serve, app, config, shutdown_trigger=trio.sleep_forever)
        served = Served((await nursery.start(run_server))[0], node)
        try:
            yield served
        finally:
            await served.http.aclose()
            nursery.cancel_scope.cancel()


@pytest.fixture
def served_with(tiny_engine: MLXEngine, smollm2_tokenizer: Tokenizer) -> Callable[..., Any]:
    """`async with served_with(max_requests=1, ...) as served:`."""

    def make(**limits: Any) -> Any:
        return open_served(tiny_engine, smollm2_tokenizer, AdmissionLimits(**limits))

    return make


async def hold_stream(
    served: Served, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """A streamed chat that is admitted, then parked at the gate until it opens."""
    async with served.http.stream("POST", CHAT, json=STREAM) as response:
        assert response.status_code == 200
        task_status.started()  # the 200 came: the slot is taken
        assert sse_payloads(await response.aread())[-1]["choices"][0]["finish_reason"]


# --- the limit and the 429


async def test_beyond_the_limit_is_429_with_retry_after(served_with: Any) -> None:
    async with served_with(max_requests=1) as served:
        async with trio.open_nursery() as nursery:
            await nursery.start(hold_stream, served)
            refused = await served.http.post(CHAT, json=BODY)
            assert refused.status_code == 429
            assert refused.headers["Retry-After"] == "1"  # nothing finished yet to estimate from
            error = error_of(refused.content)
            assert error["type"] == "requests" and error["code"] == "rate_limit_exceeded"
            assert "--max-requests" in error["message"]
            streamed = await served.http.post(CHAT, json=STREAM)
            assert streamed.status_code == 429  # streams count too, and get a plain JSON error
            # A request the client must fix hears so, not "try later", and takes no slot.
            bad = await served.http.post(CHAT, json={**BODY, "temperature": 5})
            assert bad.status_code == 400
            stats = await served.admission()
            assert stats == {
                "in_flight": 1,
                "limit": 1,
                "waiting": 0,
                "max_queued": 16,
                "queue_timeout_s": 0.0,
                "refused": 2,
            }
            topology = (await served.http.get("/v1/topology")).json()
            assert topology["admission"]["in_flight"] == 1
            served.node.gate.set()
        assert (await served.wait_idle())["refused"] == 2


async def test_sdk_sees_rate_limit_error_without_retries(served_with: Any) -> None:
    async with served_with(max_requests=1) as served, trio.open_nursery() as nursery:
        await nursery.start(hold_stream, served)
        async with served.sdk(max_retries=0) as client:
            with pytest.raises(openai.RateLimitError) as info:
                await client.chat.completions.create(**BODY)
        assert info.value.status_code == 429
        assert info.value.code == "rate_limit_exceeded"
        assert info.value.response.headers["Retry-After"] == "1"
        served.node.gate.set()


async def test_sdk_retry_honours_retry_after_and_gets_the_freed_slot(served_with: Any) -> None:
    async with served_with(max_requests=1) as served, trio.open_nursery() as nursery:
        await nursery.start(hold_stream, served)
        # The slot frees well inside the 1 s the 429 asks the client to wait.
        nursery.start_soon(open_gate_after, served.node, 0.2)
        async with served.sdk(max_retries=2) as client:
            started = trio.current_time()
            reply = await client.chat.completions.create(**BODY)
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert trio.current_time() - started >= 1.0  # it waited as told, then retried
        assert (await served.admission())["refused"] == 1


async def open_gate_after(node: GatedNode, seconds: float) -> None:
    await trio.sleep(seconds)
    node.gate.set()


async def test_no_limit_admits_everything(served_with: Any) -> None:
    async with served_with(max_requests=0) as served:
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                await nursery.start(hold_stream, served)
            stats = await served.admission()
            assert stats["in_flight"] == 5 and stats["limit"] is None
            served.node.gate.set()
        assert (await served.wait_idle())["refused"] == 0


# --- slots come back however a generation ends


async def test_cancelled_stream_frees_its_slot(served_with: Any) -> None:
    async with served_with(max_requests=1) as served:
        async with served.http.stream("POST", CHAT, json=STREAM) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            first = await anext(lines)  # the role chunk, sent before the gate
            assert json.loads(first[6:])["choices"][0]["delta"]["role"] == "assistant"
            assert (await served.admission())["in_flight"] == 1
        # Leaving the block mid-stream closes the connection: the server cancels it.
        await served.wait_idle()
        served.node.gate.set()  # the slot is free again: the next request is served
        assert (await served.http.post(CHAT, json=BODY)).status_code == 200
        assert (await served.wait_idle())["refused"] == 0


async def test_client_leaving_a_whole_reply_frees_its_slot(served_with: Any) -> None:
    async with served_with(max_requests=1) as served:
        with pytest.raises(httpx.ReadTimeout):
            await served.http.post(CHAT, json=BODY, timeout=httpx.Timeout(5, read=0.3))
        await served.wait_idle()


async def test_finished_requests_free_their_slots(served_with: Any) -> None:
    async with served_with(max_requests=1) as served:
        served.node.gate.set()
        for body in (BODY, STREAM, BODY, STREAM):
            response = await served.http.post(CHAT, json=body)
            assert response.status_code == 200
            await served.wait_idle()
        assert (await served.admission())["refused"] == 0


def tiny_request(tokenizer: Tokenizer) -> tuple[GenerationRequest, ResponseShape]:
    request = GenerationRequest(
        request_id=new_request_id(),
        prompt_tokens=tuple(tokenizer.encode("Hi")),
        sampling=SamplingParams(temperature=0),
        max_tokens=2,
    )
    return request, ResponseShape(DEFAULT_MODEL_ID, request.request_id, True, 1)


async def test_stream_body_frees_its_slot_when_closed_or_done(
    tiny_node: Node, smollm2_tokenizer: Tokenizer
) -> None:
    """The body itself gives the slot back, at once, while still referenced:
    not left to the garbage-collection net below."""
    admission = Admission(AdmissionLimits(max_requests=1))
    for read_all in (False, True):
        request, shape = tiny_request(smollm2_tokenizer)
        slot = await admission.admit()
        events = stream_events(Replies(tiny_node, [request], None, [None]), shape, False, slot)
        assert isinstance(events, AsyncGenerator)
        if read_all:
            assert [event async for event in events][-1] == b"data: [DONE]\n\n"
        else:
            await anext(events)  # the role chunk: the stream has begun
            assert admission.in_flight == 1
            await events.aclose()  # what a client disconnect comes down to
        assert admission.in_flight == 0
    with trio.fail_after(10):  # the worker frees the KV cache after its step in flight
        while tiny_node.engine.active_requests():
            await trio.sleep(0.01)


async def test_unread_stream_body_frees_its_slot(
    tiny_node: Node, smollm2_tokenizer: Tokenizer
) -> None:
    """A response dropped before its body is iterated (the client left between
    the handler's return and the first byte) still gives its slot back."""
    admission = Admission(AdmissionLimits(max_requests=1))
    request, shape = tiny_request(smollm2_tokenizer)
    replies = Replies(tiny_node, [request], None, [None])
    response = stream_response(replies, shape, False, await admission.admit())
    assert admission.in_flight == 1
    del response
    gc.collect()
    await trio.testing.wait_all_tasks_blocked()  # the release runs as a callback of the run
    assert admission.in_flight == 0
    (await admission.admit()).release()  # the semaphore got its slot back too


# --- waiting for a slot


async def test_a_waiting_request_gets_the_next_free_slot(served_with: Any) -> None:
    async with served_with(max_requests=1, queue_timeout_s=30) as served:
        async with trio.open_nursery() as nursery:
            await nursery.start(hold_stream, served)
            waited: list[int] = []

            async def wait_in_queue() -> None:
                waited.append((await served.http.post(CHAT, json=BODY)).status_code)

            nursery.start_soon(wait_in_queue)
            await served.wait_for(lambda s: s["waiting"] == 1)
            served.node.gate.set()
        assert waited == [200]
        assert (await served.wait_idle())["refused"] == 0


async def test_full_queue_refuses_at_once_and_the_wait_times_out(served_with: Any) -> None:
    async with served_with(max_requests=1, max_queued=1, queue_timeout_s=0.5) as served:
        async with trio.open_nursery() as nursery:
            await nursery.start(hold_stream, served)
            results: list[tuple[int, float]] = []

            async def timed_post() -> None:
                started = trio.current_time()
                response = await served.http.post(CHAT, json=BODY)
                results.append((response.status_code, trio.current_time() - started))

            async with trio.open_nursery() as queued:
                queued.start_soon(timed_post)
                await served.wait_for(lambda s: s["waiting"] == 1)
                full = await served.http.post(CHAT, json=BODY)
                assert full.status_code == 429  # the one place in the queue is taken
            [(status, seconds)] = results
            assert status == 429 and seconds >= 0.5  # refused after waiting its time
            assert (await served.admission())["in_flight"] == 1
            served.node.gate.set()
        assert (await served.wait_idle())["refused"] == 2


async def test_a_client_leaving_the_queue_leaves_no_trace(served_with: Any) -> None:
    async with served_with(max_requests=1, queue_timeout_s=30) as served:
        async with trio.open_nursery() as nursery:
            await nursery.start(hold_stream, served)
            with pytest.raises(httpx.ReadTimeout):
                await served.http.post(CHAT, json=BODY, timeout=httpx.Timeout(5, read=0.3))
            await served.wait_for(lambda s: s["waiting"] == 0)
            served.node.gate.set()
        assert (await served.wait_idle())["refused"] == 0


# --- pure parts: the limits, the Retry-After estimate, the flags


@pytest.mark.parametrize(
    "limits",
    [
        {"max_requests": -1},
        {"max_queued": -1},
        {"queue_timeout_s": -0.5},
        {"queue_timeout_s": float("inf")},
        {"queue_timeout_s": float("nan")},
    ],
)
def test_bad_limits_are_refused(limits: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="--"):
        AdmissionLimits(**limits)


@pytest.mark.parametrize(
    ("mean_hold_s", "max_requests", "seconds"),
    [
        (None, 64, 1),  # nothing finished yet
        (0.2, 1, 1),  # never below 1
        (30.0, 64, 1),  # 64 slots of 30 s: one frees every half second
        (30.0, 4, 8),
        (3600.0, 2, 60),  # never past what the SDKs honour
        (10.0, 0, 1),
    ],
)
def test_retry_after_estimate(mean_hold_s: float | None, max_requests: int, seconds: int) -> None:
    assert retry_after_s(mean_hold_s, max_requests) == seconds


def test_up_flags_default_to_the_admission_defaults() -> None:
    parser = build_parser()
    defaults = parser.parse_args(["up"])
    assert (
        AdmissionLimits(defaults.max_requests, defaults.max_queued, defaults.queue_timeout)
        == AdmissionLimits()
    )
    given = parser.parse_args(
        ["up", "--max-requests", "0", "--queue-timeout", "2.5", "--max-queued", "3"]
    )
    assert (given.max_requests, given.queue_timeout, given.max_queued) == (0, 2.5, 3)
