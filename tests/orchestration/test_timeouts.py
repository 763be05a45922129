"""Timeouts and retries of the orchestration, on Trio's mock clock (no real waiting).

`autojump_clock` (pytest-trio: `MockClock(autojump_threshold=0)`) jumps to the
next deadline whenever every task waits, so a 60-second timeout takes no time,
and `trio.current_time()` says exactly when something happened (the mock
clock starts at an arbitrary time: the tests measure from their own start).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from test_cluster import CONFIG, MIB, MODEL_ID, REQUIREMENTS, load_shard
from test_ring_origin import NODE, ORIGIN, plan

from exoquic.engines.sampling import SamplingParams
from exoquic.identity.keys import Identity
from exoquic.models.shard import Shard
from exoquic.models.weights import ShardWeights
from exoquic.orchestration import plans as plans_module
from exoquic.orchestration.generation import UnavailableError
from exoquic.orchestration.planning import Member, PlanState
from exoquic.orchestration.plans import PlanLoop, Plans
from exoquic.orchestration.ring import Ring, RingSettings
from exoquic.orchestration.worker import EngineWorker
from exoquic.topology import Assignment, DeviceCapabilities, Plan, Proposal
from exoquic.wire.messages import Message

Clock = trio.testing.MockClock


class SilentRing:
    """Plans that always have plan `version` ready, and a first node that takes
    every message and never answers."""

    def __init__(self) -> None:
        self.sent: list[tuple[float, Message]] = []

    async def send(self, node_id: str, message: Message) -> None:
        self.sent.append((trio.current_time(), message))

    def serving_plan(self, version: int) -> Plan | None:
        return plan(version)

    async def wait_usable_plan(self, newer_than: int) -> Plan:
        return plan(newer_than + 1)


async def test_a_step_without_an_answer_fails_after_its_timeout(autojump_clock: Clock) -> None:
    start = trio.current_time()
    silent = SilentRing()
    settings = RingSettings(step_timeout=60.0, step_timeout_per_token=1.0)
    ring = Ring(ORIGIN, silent, silent.send, EngineWorker.__new__(EngineWorker), settings)
    tokens = ring.generate_tokens("req", [1, 2, 3], SamplingParams(), 4)
    with pytest.raises(UnavailableError, match="no answer from the ring within 63 s"):
        async for _ in tokens:
            pass
    # 60 s for the step, 1 s more for each of its 3 positions; then the release.
    assert trio.current_time() - start == pytest.approx(63.0)
    assert ring.stats.failed_requests == 1
    assert [type(m).__name__ for _, m in silent.sent] == ["Forward", "Release"]


def alone(plan_timeout: float = 60.0) -> Plans:
    caps = DeviceCapabilities(1000 * MIB, 1000 * MIB, "test", "mlx")
    return Plans(PlanState(Member(NODE, "a", caps), REQUIREMENTS, 1.0), plan_timeout)


async def test_waiting_for_a_plan_gives_up_after_the_plan_timeout(autojump_clock: Clock) -> None:
    start = trio.current_time()
    plans = alone(plan_timeout=60.0)
    with pytest.raises(UnavailableError, match=r"no plan within 60 s \(forming\)"):
        await plans.wait_usable_plan(-1)
    assert trio.current_time() - start == pytest.approx(60.0)


async def test_a_plan_that_becomes_active_ends_the_wait_at_once(autojump_clock: Clock) -> None:
    start = trio.current_time()
    plans = alone()
    whole = Plan(0, MODEL_ID, (Assignment(NODE, Shard.whole(MODEL_ID, CONFIG.num_layers)),))

    async def activate_later() -> None:
        await trio.sleep(5)
        plans.state.offer(whole, NODE)
        plans.state.mark_loaded(Proposal(whole, NODE))
        plans.pulse()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(activate_later)
        assert await plans.wait_usable_plan(-1) == whole
    assert trio.current_time() - start == pytest.approx(5.0)


class StandInPeers:
    """No peers at all: what the plan loop needs of `Peers`."""

    def live_peers(self) -> list[str]:
        return []

    def name(self, node_id: str) -> str:
        return node_id

    async def wait_for_known_peers(self) -> None:
        await trio.sleep_forever()  # some peer never links: the join timeout ends the wait

    async def send_quietly(self, node_id: str, message: Message) -> None:
        raise AssertionError("nobody to send to")


class StandInRequests:
    """Records, with the time, what plan changes do to requests."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str]] = []

    def interrupt(self, affected: Callable[[Plan], bool], reason: str) -> None:
        self.events.append((trio.current_time(), reason))

    def fail_all(self, reason: str) -> None:
        self.events.append((trio.current_time(), f"failed: {reason}"))

    def forget_served(self) -> None:
        self.events.append((trio.current_time(), "forget served"))

    def drop_prefixes(self) -> None:
        """Kept prefix caches are the ring's business, not these tests'."""


class LoadingWorker:
    """Takes shards without an engine; records when."""

    def __init__(self) -> None:
        self.loads: list[float] = []
        self.engine: Any = None

    async def load(self, weights: ShardWeights) -> None:
        self.loads.append(trio.current_time())


POLL = 0.01


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll (in mock time): what it waits for happened at most POLL earlier."""
    with trio.fail_after(600):
        while not condition():
            await trio.sleep(POLL)


async def test_the_first_plan_waits_for_the_join_timeout_and_settled_membership(
    autojump_clock: Clock,
) -> None:
    start = trio.current_time()
    plans, requests, worker = alone(), StandInRequests(), LoadingWorker()
    loop = PlanLoop(
        plans, StandInPeers(), requests, worker, load_shard,  # type: ignore[arg-type]
        settle_time=0.3, join_timeout=5.0,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await wait_until(lambda: plans.state.active_plan() is not None)
        nursery.cancel_scope.cancel()
    # 5 s for the peers discovery knows, 0.3 s of settled membership, then plan 0.
    adopted_at, reason = requests.events[0]
    assert reason == "the plan changed" and adopted_at - start == pytest.approx(5.3)
    assert worker.loads and worker.loads[0] >= adopted_at
    assert plans.shard == Shard.whole(MODEL_ID, CONFIG.num_layers)


def larger_node_id() -> str:
    """A peer's node id above this node's, so that this node still coordinates."""
    while (node_id := Identity.generate().node_id) < NODE:
        pass
    return node_id


async def test_a_membership_change_within_the_settle_time_restarts_it(
    autojump_clock: Clock,
) -> None:
    start = trio.current_time()
    plans, requests = alone(), StandInRequests()
    loop = PlanLoop(
        plans, StandInPeers(), requests, LoadingWorker(), load_shard,  # type: ignore[arg-type]
        settle_time=1.0, join_timeout=0.0,
    )  # fmt: skip
    caps = DeviceCapabilities(1000 * MIB, 1000 * MIB, "test", "mlx")
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await trio.sleep(0.5)
        loop.peer_joined(Member(larger_node_id(), "b", caps), None)
        await wait_until(lambda: plans.state.adopted is not None)
        nursery.cancel_scope.cancel()
    # settling began at 0; b joined at 0.5; a second of quiet from then on
    assert requests.events[0][0] - start == pytest.approx(1.5)


async def test_a_failed_load_is_tried_again_after_the_retry_delay(autojump_clock: Clock) -> None:
    plans, requests, worker = alone(), StandInRequests(), LoadingWorker()
    attempts: list[Shard] = []

    def flaky(shard: Shard) -> ShardWeights:
        attempts.append(shard)
        if len(attempts) == 1:
            raise OSError("cannot reach the hub")
        return load_shard(shard)

    loop = PlanLoop(
        plans, StandInPeers(), requests, worker, flaky,  # type: ignore[arg-type]
        settle_time=0.3, join_timeout=0.0,
    )  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(loop.run)
        await wait_until(lambda: loop.preparation.stage == "failed")
        failed_at = trio.current_time()
        assert plans.status() == "loading"
        await wait_until(lambda: plans.state.active_plan() is not None)
        nursery.cancel_scope.cancel()
    assert len(attempts) == 2
    assert worker.loads[0] - failed_at >= plans_module.LOAD_RETRY_DELAY - POLL
