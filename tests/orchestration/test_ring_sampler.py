"""The last shard's sampler: one per request, from the prompt's step to its release.

A ring serving a whole (stand-in) model for a peer's requests, driven message
by message as the router would drive it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import trio
from test_worker import RecordingEngine

from exoquic.identity.keys import Identity
from exoquic.orchestration.planning import Member
from exoquic.orchestration.plans import Plans
from exoquic.orchestration.ring import Ring
from exoquic.orchestration.worker import EngineWorker
from exoquic.topology import DeviceCapabilities
from exoquic.wire.messages import Forward, Message, Release, RequestFailed, TokenResult

ME = Identity.generate().node_id
PEER = Identity.generate().node_id  # the requests' origin


class LogitsEngine(RecordingEngine):
    """A last shard whose logits favour token 7 (greedy draws 7 every step)."""

    def forward_batch(self, items: list) -> list[np.ndarray]:  # type: ignore[type-arg]
        super().forward_batch(items)
        logits = np.zeros(16, np.float32)
        logits[7] = 1.0
        return [logits for _ in items]


@dataclass
class Outbox:
    sent: list[tuple[str, Message]] = field(default_factory=list)

    async def send(self, node_id: str, message: Message) -> None:
        self.sent.append((node_id, message))


def step(step: int, sampling: dict[str, object] | None = None, request: str = "r.0") -> Forward:
    tokens = np.asarray([1, 2, 3] if step == 0 else [7], np.int32)
    return Forward(request, 0, 0 if step == 0 else 2 + step, tokens, PEER, step, sampling)


async def deliver(ring: Ring, message: Message) -> None:
    follow_up = ring.receive(PEER, message)
    if follow_up is not None:
        await follow_up()


def serving_ring(outbox: Outbox) -> tuple[Ring, EngineWorker]:
    """A ring whose node holds the whole model (plan 0), answering into `outbox`."""
    caps = DeviceCapabilities(1 << 30, 1 << 30, "test", "recording")
    worker = EngineWorker(LogitsEngine())
    return Ring(ME, Plans.alone(Member(ME, "me", caps), "m", 2), outbox.send, worker), worker


async def test_the_sampler_lives_from_the_prompt_to_the_release() -> None:
    outbox = Outbox()
    ring, worker = serving_ring(outbox)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await deliver(ring, step(0, {"top_k": 3}))  # the prompt brings the parameters
        await deliver(ring, step(1))  # later steps do not: the sampler is kept
        assert len(ring._samplers) == 1
        await deliver(ring, Release("r.0"))
        assert not ring._samplers  # released with the request's cache
        await deliver(ring, step(2))  # released: its sampler went with it
        # a replay (a new try) brings the parameters again with its prompt
        await deliver(ring, step(0, {}, request="r.1"))
        await deliver(ring, step(1, request="r.1"))
        nursery.cancel_scope.cancel()
    replies = [(to, type(m).__name__, m.request_id) for to, m in outbox.sent]
    assert replies == [
        (PEER, "TokenResult", "r.0"),
        (PEER, "TokenResult", "r.0"),
        (PEER, "TokenResult", "r.1"),
        (PEER, "TokenResult", "r.1"),
    ]  # the released request's late step was dropped, not answered
    assert all(m.token_id == 7 for _, m in outbox.sent if isinstance(m, TokenResult))


async def test_a_later_step_without_a_sampler_is_refused_for_a_replay() -> None:
    outbox = Outbox()
    ring, worker = serving_ring(outbox)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await deliver(ring, step(1))  # (its prompt never came here)
        await deliver(ring, step(0, {"mirostat_tau": 5.0}, request="r.2"))
        nursery.cancel_scope.cancel()
    [(_, lost), (_, unknown)] = outbox.sent
    assert isinstance(lost, RequestFailed) and lost.retryable and "no sampler" in lost.reason
    assert isinstance(unknown, RequestFailed) and not unknown.retryable
    assert "unknown sampling parameters ['mirostat_tau']" in unknown.reason
