"""The engine worker's scheduling, with a recording stand-in engine (pure logic)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import trio
import trio.testing

from exoquic.engines.base import Engine, ForwardItem
from exoquic.models.shard import Shard
from exoquic.models.weights import ShardWeights
from exoquic.orchestration.worker import EngineWorker


class RecordingEngine(Engine):
    """Returns each input plus its request's step count; records every batch."""

    name = "recording"

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.steps: dict[str, int] = {}
        self.threads: set[int] = set()
        self.gate = threading.Event()
        self.gate.set()

    @property
    def shard(self) -> Shard | None:
        return None

    def load(self, weights: ShardWeights) -> None:
        pass

    def forward(self, request_id: str, inputs: np.ndarray) -> np.ndarray:
        return self.forward_batch([ForwardItem(request_id, inputs)])[0]

    def forward_batch(self, items: list[ForwardItem]) -> list[np.ndarray]:
        self.gate.wait()
        self.threads.add(threading.get_ident())
        self.batches.append([item.request_id for item in items])
        if any(item.inputs.size == 0 for item in items):
            raise ValueError("empty input")
        outputs = []
        for item in items:
            self.steps[item.request_id] = self.steps.get(item.request_id, 0) + 1
            outputs.append(item.inputs + self.steps[item.request_id])
        return outputs

    def cache_length(self, request_id: str) -> int:
        return self.steps.get(request_id, 0)

    def release(self, request_id: str) -> None:
        self.steps.pop(request_id, None)

    def active_requests(self) -> int:
        return len(self.steps)


async def test_concurrent_steps_are_batched_and_results_routed() -> None:
    engine = RecordingEngine()
    worker = EngineWorker(engine, max_batch=8)
    results: dict[str, list[int]] = {}
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)

        async def request(name: str, base: int) -> None:
            out = []
            for _ in range(3):
                out.append(int((await worker.forward(name, np.array([base])))[0]))
            results[name] = out

        engine.gate.clear()  # hold the first batch so the others queue behind it
        async with trio.open_nursery() as requests:
            for i in range(4):
                requests.start_soon(request, f"r{i}", 100 * i)
            await trio.testing.wait_all_tasks_blocked()  # every request queued its step
            engine.gate.set()
        nursery.cancel_scope.cancel()
    assert results == {f"r{i}": [100 * i + 1, 100 * i + 2, 100 * i + 3] for i in range(4)}
    assert worker.statistics().largest_batch >= 3
    assert len(engine.threads) == 1  # one engine thread, whatever the pool would do


async def test_engine_error_reaches_the_caller_and_worker_keeps_going() -> None:
    engine = RecordingEngine()
    worker = EngineWorker(engine)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        with pytest.raises(ValueError, match="empty input"):
            await worker.forward("bad", np.array([], dtype=np.int32))
        assert int((await worker.forward("good", np.array([1])))[0]) == 2
        nursery.cancel_scope.cancel()


async def open_gate_later(engine: RecordingEngine) -> None:
    await trio.sleep(0.2)
    engine.gate.set()


async def test_cancelled_caller_does_not_break_the_engine_state(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = RecordingEngine()
    worker = EngineWorker(engine)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        engine.gate.clear()
        nursery.start_soon(open_gate_later, engine)
        with trio.move_on_after(0.05) as scope:
            await worker.forward("r", np.array([0]))
        # The caller waited for its step to finish (shielded) and then saw the cancel.
        assert scope.cancelled_caught
        assert await worker.call(lambda: engine.cache_length("r")) == 1
        await worker.call(lambda: engine.release("r"))
        assert engine.active_requests() == 0
        nursery.cancel_scope.cancel()


async def test_a_step_cancelled_while_queued_is_skipped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = RecordingEngine()
    worker = EngineWorker(engine)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        engine.gate.clear()
        nursery.start_soon(worker.forward, "busy", np.array([0]))
        await trio.testing.wait_all_tasks_blocked()  # "busy" now occupies the engine thread
        with trio.move_on_after(0.05):
            await worker.forward("gone", np.array([0]))
        engine.gate.set()
        assert await worker.call(lambda: engine.cache_length("busy")) == 1
        assert engine.cache_length("gone") == 0  # never ran
        assert ["gone"] not in engine.batches
        nursery.cancel_scope.cancel()


class PositionEngine(RecordingEngine):
    """Hidden-state stand-in: each output row is the position it was computed at,
    so a chunked prefill must come back equal to an unchunked one. With `logits`,
    it answers like a last shard: one vector, for the last position only."""

    def __init__(self, logits: bool = False) -> None:
        super().__init__()
        self.logits = logits
        self.calls: list[tuple[str, int]] = []  # (request, positions) per forward item

    def forward_batch(self, items: list[ForwardItem]) -> list[np.ndarray]:
        self.gate.wait()
        outputs = []
        for item in items:
            start = self.steps.get(item.request_id, 0)
            self.calls.append((item.request_id, len(item.inputs)))
            self.steps[item.request_id] = start + len(item.inputs)
            rows = np.arange(start, start + len(item.inputs), dtype=np.float32)[:, None]
            outputs.append(rows[-1] if self.logits else rows)
        return outputs


def hidden(positions: int) -> np.ndarray:
    return np.zeros((positions, 1), np.float32)


async def test_a_long_prefill_runs_in_chunks_and_comes_back_whole() -> None:
    engine = PositionEngine()
    worker = EngineWorker(engine, prefill_chunk=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        output = await worker.forward("long", hidden(10))
        nursery.cancel_scope.cancel()
    assert output.tolist() == [[float(i)] for i in range(10)]
    assert engine.calls == [("long", 4), ("long", 4), ("long", 2)]


async def test_a_chunked_prefill_on_a_last_shard_returns_the_last_positions_logits() -> None:
    engine = PositionEngine(logits=True)
    worker = EngineWorker(engine, prefill_chunk=4)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        output = await worker.forward("long", hidden(10))
        nursery.cancel_scope.cancel()
    assert output.tolist() == [9.0]


async def test_decode_steps_take_turns_with_the_chunks_of_a_long_prefill() -> None:
    engine = PositionEngine()
    worker = EngineWorker(engine, prefill_chunk=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        for name in ("a", "b"):  # two requests already decoding
            await worker.forward(name, hidden(1))
        engine.calls.clear()
        engine.gate.clear()
        long = worker.forward_nowait("long", hidden(6))
        await trio.testing.wait_all_tasks_blocked()  # its first chunk holds the engine now
        steps = [worker.forward_nowait(name, hidden(1)) for name in ("a", "b")]
        engine.gate.set()
        assert (await long.wait()).tolist() == [[float(i)] for i in range(6)]
        for step in steps:
            assert (await step.wait()).tolist() == [[1.0]]
        nursery.cancel_scope.cancel()
    # The decode steps ran as one batch between the first and second chunks.
    assert engine.calls == [("long", 2), ("a", 1), ("b", 1), ("long", 2), ("long", 2)]


async def test_a_prefill_keeps_progressing_while_decode_steps_keep_coming() -> None:
    engine = PositionEngine()
    worker = EngineWorker(engine, prefill_chunk=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)

        async def decode_forever(name: str) -> None:
            while True:
                await worker.forward(name, hidden(1))

        nursery.start_soon(decode_forever, "a")
        nursery.start_soon(decode_forever, "b")
        await trio.testing.wait_all_tasks_blocked()  # both decode in the engine thread
        # (real time: the engine thread runs all along, an autojumping clock would
        # reach this deadline whenever the event loop waits for it)
        with trio.fail_after(5):
            output = await worker.forward("long", hidden(5))
        nursery.cancel_scope.cancel()
    assert output.tolist() == [[float(i)] for i in range(5)]


async def test_a_cancelled_chunked_prefill_stops_between_chunks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = PositionEngine()
    worker = EngineWorker(engine, prefill_chunk=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        engine.gate.clear()
        nursery.start_soon(open_gate_later, engine)
        with trio.move_on_after(0.05) as scope:
            await worker.forward("gone", hidden(8))
        assert scope.cancelled_caught
        # The chunk that was running finished (caches stay whole); no other ran.
        assert await worker.call(lambda: engine.cache_length("gone")) == 2
        nursery.cancel_scope.cancel()


async def test_an_engine_call_waits_for_every_chunk_queued_before_it() -> None:
    engine = PositionEngine()
    worker = EngineWorker(engine, prefill_chunk=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        prefill = worker.forward_nowait("r", hidden(6))
        length = await worker.call(lambda: engine.cache_length("r"))
        assert (await prefill.wait()).shape == (6, 1)
        nursery.cancel_scope.cancel()
    assert length == 6


class WarmingEngine(RecordingEngine):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def load(self, weights: ShardWeights) -> None:
        self.gate.wait()
        self.events.append("load")

    def warm_up(self) -> None:
        self.events.append("warm_up")


async def test_loading_a_shard_warms_it_up_before_anything_queued_after() -> None:
    engine = WarmingEngine()
    worker = EngineWorker(engine)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        engine.gate.clear()  # the load holds the engine thread
        nursery.start_soon(worker.load, ShardWeights.__new__(ShardWeights))
        await trio.testing.wait_all_tasks_blocked()
        later = worker.call_nowait(lambda: engine.events.append("next call"))
        engine.gate.set()
        await later.wait()
        nursery.cancel_scope.cancel()
    assert engine.events == ["load", "warm_up", "next call"]


async def test_requests_stepping_together_stay_in_one_batch() -> None:
    """Each result wakes its request, which queues its next step at once: the worker
    waits for those before taking the queue, so four requests make batches of four."""
    engine = RecordingEngine()
    worker = EngineWorker(engine)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)

        async def request(name: str, hops: int) -> None:
            for _ in range(6):
                await worker.forward(name, np.array([1]))
                for _ in range(hops):  # a result passes a task or two before it is used
                    await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as requests:
            for i, hops in enumerate([0, 1, 2, 2]):
                requests.start_soon(request, f"r{i}", hops)
        nursery.cancel_scope.cancel()
    assert [len(batch) for batch in engine.batches] == [4] * 6


async def test_a_batch_limit_splits_requests_stepping_together() -> None:
    """Around a ring the worker's batches are capped (`limit_batches`) so that
    requests form groups that different nodes work on at once."""
    engine = RecordingEngine()
    worker = EngineWorker(engine)
    worker.limit_batches(2)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)

        async def request(name: str) -> None:
            for _ in range(3):
                await worker.forward(name, np.array([1]))

        async with trio.open_nursery() as requests:
            for i in range(4):
                requests.start_soon(request, f"r{i}")
        nursery.cancel_scope.cancel()
    sizes = [len(batch) for batch in engine.batches]
    assert max(sizes) == 2 and sum(sizes) == 12, engine.batches


def test_a_batch_limit_stays_within_one_and_the_largest_batch() -> None:
    worker = EngineWorker(RecordingEngine(), max_batch=8)
    worker.limit_batches(0)
    assert worker.batch_limit == 1
    worker.limit_batches(50)
    assert worker.batch_limit == 8
