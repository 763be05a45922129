"""The origin's step loop (`Ring.generate_tokens`) against a stand-in ring (pure logic):
the next step leaves before a token is handed out, and nothing is lost on the way."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import trio

from exoquic.engines.sampling import SamplingParams
from exoquic.identity.keys import Identity
from exoquic.models.shard import Shard
from exoquic.orchestration.peers import PeerUnavailable
from exoquic.orchestration.ring import Ring
from exoquic.orchestration.worker import PREFILL_CHUNK, EngineWorker
from exoquic.topology import Plan
from exoquic.topology.partition import Assignment
from exoquic.wire.messages import Forward, Message, Release, TokenResult

NODE = "exq-XGYA-KPPC-6SEY-M6EB-T"  # the plan's one node
ORIGIN = Identity.generate().node_id  # the node holding the request


def plan(version: int) -> Plan:
    return Plan(version, "m", (Assignment(NODE, Shard("m", 0, 3, 4)),))


class StandInRing:
    """Answers every forward step with token 100 + its step index (a whole prompt
    chunk with 500 + its start position); the forward steps numbered in `unreachable` fail
    to send, as if the first node had just died. It is the origin's plans and peers."""

    def __init__(self, unreachable: set[int]) -> None:
        self.ring: Ring | None = None
        self.unreachable = unreachable
        self.forwards: list[Forward] = []
        self.released: list[str] = []
        self.log: list[str] = []

    async def send(self, node_id: str, message: Message) -> None:
        assert self.ring is not None
        if isinstance(message, Release):
            self.released.append(message.request_id)
            return
        assert isinstance(message, Forward)
        self.forwards.append(message)
        self.log.append(f"sent step {message.step}")
        if len(self.forwards) in self.unreachable:
            raise PeerUnavailable("first node unreachable")
        token = 100 + message.step
        if len(message.tensor) == PREFILL_CHUNK:  # a prompt's chunk, maybe not its last
            token = 500 + message.start_position
        self.ring.receive(NODE, TokenResult(message.request_id, token))

    def serving_plan(self, version: int) -> Plan | None:
        return plan(version)

    async def wait_usable_plan(self, newer_than: int) -> Plan:
        return plan(newer_than + 1)


async def run(
    stand_in: StandInRing,
    budget: int,
    stop_after: int | None = None,
    prompt: list[int] | None = None,
) -> list[int]:
    # As origin only, the ring never touches its engine: an unstarted worker shell.
    ring = Ring(ORIGIN, stand_in, stand_in.send, EngineWorker.__new__(EngineWorker))
    stand_in.ring = ring
    tokens: list[int] = []
    prompt = [1, 2, 3] if prompt is None else prompt
    generator = ring.generate_tokens("req", prompt, SamplingParams(), budget)
    try:
        async for token in generator:
            stand_in.log.append(f"got {token}")
            tokens.append(token)
            if len(tokens) == stop_after:
                break
    finally:
        await generator.aclose()
    return tokens


async def test_the_next_step_leaves_before_the_token_is_handed_out() -> None:
    stand_in = StandInRing(unreachable=set())
    assert await run(stand_in, budget=3) == [100, 101, 102]
    assert stand_in.log == [
        "sent step 0", "sent step 1", "got 100", "sent step 2", "got 101", "got 102",
    ]  # fmt: skip
    assert stand_in.released == ["req.0"]


async def test_a_step_that_cannot_leave_replays_after_handing_out_its_token() -> None:
    # The third forward (the early send of step 2) fails: token 101 must still come
    # out, then the request replays its history under a newer plan and goes on.
    stand_in = StandInRing(unreachable={3})
    with trio.fail_after(5):
        assert await run(stand_in, budget=5) == [100, 101, 102, 103, 104]
    # The replay resends the first try's steps: the prompt, then each token so far
    # as its own decode step, with its position and step index, all at once.
    replay = stand_in.forwards[3:6]
    assert {f.request_id for f in replay} == {"req.1"}
    assert [f.tensor.tolist() for f in replay] == [[1, 2, 3], [100], [101]]
    assert [f.start_position for f in replay] == [0, 3, 4]
    assert [f.step for f in replay] == [0, 1, 2]
    assert stand_in.forwards[6].step == 3 and stand_in.forwards[6].tensor.tolist() == [102]
    assert stand_in.released == ["req.0", "req.1"]


async def test_a_replay_that_samples_other_tokens_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The replay's steps sample the tokens of the first try again; when the ring
    computes differently now, the origin says so (and goes on)."""
    stand_in = StandInRing(unreachable={3})
    original_send = stand_in.send

    async def send(node_id: str, message: Message) -> None:
        if isinstance(message, Forward) and message.request_id == "req.1":
            message = replace(message, step=message.step + 7)  # another token than before
        await original_send(node_id, message)

    stand_in.send = send  # type: ignore[method-assign]  # (before the ring takes it)
    ring_tokens = await run(stand_in, budget=4)
    assert ring_tokens[:2] == [100, 101]
    assert stand_in.ring is not None and stand_in.ring.stats.replay_mismatches == 1
    assert "sampled token 0 differently (107, first try 100)" in caplog.text


async def test_a_caller_stopping_early_releases_the_step_in_flight() -> None:
    stand_in = StandInRing(unreachable=set())
    assert await run(stand_in, budget=10, stop_after=2) == [100, 101]
    assert [f.step for f in stand_in.forwards] == [0, 1, 2]  # step 2 already left
    assert stand_in.released == ["req.0"]
    assert np.asarray(stand_in.forwards[2].tensor).tolist() == [101]


async def test_a_long_prompt_leaves_in_chunks_and_the_last_chunk_gives_the_token() -> None:
    """Chunks go out at once (the ring pipelines them); every chunk is answered, and
    only the last one's token is the request's."""
    stand_in = StandInRing(unreachable=set())
    prompt = list(range(1, 2 * PREFILL_CHUNK + 45))
    with trio.fail_after(5):
        assert await run(stand_in, budget=2, prompt=prompt) == [100, 101]
    chunks = stand_in.forwards[:3]
    assert [f.start_position for f in chunks] == [0, PREFILL_CHUNK, 2 * PREFILL_CHUNK]
    assert [t for f in chunks for t in f.tensor.tolist()] == prompt
    assert {f.step for f in chunks} == {0}
    assert stand_in.forwards[3].start_position == len(prompt)
