"""Runs an engine in one worker thread and batches the work queued for it.

Engines are blocking and not thread-safe, so every call goes through one
`EngineWorker` task, and runs on one dedicated thread: some engine libraries
tie state to the thread that created it (tinygrad's kernel cache is an SQLite
connection), so a pool that hands calls to whichever thread is free breaks them.

Requests queue their forward steps; the worker takes
everything queued at that moment and hands it to `Engine.forward_batch` in a
single thread call. While one batch runs, the next one gathers, so concurrent
requests' decode steps ride together (decode is memory-bound: one pass over
the weights serves the whole batch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import trio

from exoquic.engines.base import Engine, ForwardItem

T = TypeVar("T")


@dataclass
class Job:
    """Work queued for the engine; `await job.wait()` for its result.

    `seconds` is how long the engine call that ran it took (for a batched
    forward step, the whole batch's time).
    """

    run: Callable[[], Any] | None  # None for forward jobs, which are batched
    item: ForwardItem | None = None
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None
    seconds: float = 0.0
    started: bool = False
    abandoned: bool = False  # cancelled before it started: the worker skips it

    async def wait(self) -> Any:
        """The job's result (or its exception).

        A caller cancelled while the job is still queued abandons it, so a
        disconnected client's prefill costs nothing. Once started, the job
        runs to completion and the caller waits for it even when cancelled:
        the engine's state (its caches) must not be left half-updated.
        """
        try:
            await self.done.wait()
        except trio.Cancelled:
            if not self.started:
                self.abandoned = True
                raise
            with trio.CancelScope(shield=True):
                await self.done.wait()
            raise
        if self.error is not None:
            raise self.error
        return self.result


@dataclass
class WorkerStatistics:
    batches: int = 0
    forwarded_items: int = 0
    largest_batch: int = 0
    compute_seconds: float = 0.0  # forward calls, from queueing on the thread to the result
    engine_seconds: float = 0.0  # forward calls, inside the engine thread only


class EngineWorker:
    """Serialises engine access through one task; use `run` in a nursery."""

    def __init__(self, engine: Engine, max_batch: int = 16) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._send, self._receive = trio.open_memory_channel[Job](math.inf)
        self._stats = WorkerStatistics()

    def statistics(self) -> WorkerStatistics:
        return self._stats

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="exoquic-engine") as thread:
            self._thread = thread
            task_status.started()
            await self._serve()

    async def _in_engine_thread(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the engine's own thread and wait for it without blocking Trio."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future = self._thread.submit(fn)
        future.add_done_callback(lambda _: token.run_sync_soon(done.set))
        # Not cancellable: the engine call runs to the end either way, and its
        # result must be delivered (see `_submit`).
        with trio.CancelScope(shield=True):
            await done.wait()
        return future.result()

    async def _serve(self) -> None:
        async for first in self._receive:
            jobs = [first, *self._drain(self.max_batch - 1)]
            # Strictly in queue order: a release or a shard load queued after a
            # forward step must not overtake it. Neighbouring forwards batch.
            for queued in _in_order(jobs):
                group = [job for job in queued if not job.abandoned]
                if not group:
                    continue
                for job in group:
                    job.started = True
                if group[0].run is not None:
                    await self._run_call(group[0])
                else:
                    await self._run_forwards(group)

    async def forward(self, request_id: str, inputs: np.ndarray) -> np.ndarray:
        """Queue one forward step and wait for its output (see `Engine.forward`)."""
        output: np.ndarray = await self.forward_nowait(request_id, inputs).wait()
        return output

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run any other engine method (load, release...) in the worker thread, in order."""
        return await self.call_nowait(fn).wait()

    def forward_nowait(self, request_id: str, inputs: np.ndarray) -> Job:
        """Queue one forward step now (jobs run in the order they are queued)."""
        return self._queue(Job(run=None, item=ForwardItem(request_id, inputs)))

    def call_nowait(self, fn: Callable[[], Any]) -> Job:
        """Queue an engine call now, after everything already queued."""
        return self._queue(Job(run=fn))

    def _queue(self, job: Job) -> Job:
        self._send.send_nowait(job)
        return job

    def _drain(self, limit: int) -> list[Job]:
        jobs: list[Job] = []
        while len(jobs) < limit:
            try:
                jobs.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        return jobs

    async def _run_call(self, job: Job) -> None:
        assert job.run is not None
        started = time.perf_counter()
        try:
            job.result = await self._in_engine_thread(job.run)
        except Exception as exc:
            job.error = exc
        job.seconds = time.perf_counter() - started
        job.done.set()

    async def _run_forwards(self, jobs: list[Job]) -> None:
        items = [job.item for job in jobs if job.item is not None]
        started = time.perf_counter()
        try:
            outputs = await self._in_engine_thread(lambda: self._forward_batch(items))
        except Exception as exc:
            # Callers check their context budget before queueing, so a failure
            # here is the engine's own; every request in the batch sees it.
            for job in jobs:
                job.error = exc
                job.done.set()
            return
        seconds = time.perf_counter() - started
        self._stats.compute_seconds += seconds
        for job, output in zip(jobs, outputs, strict=True):
            job.result = output
            job.seconds = seconds
            job.done.set()

    def _forward_batch(self, items: list[ForwardItem]) -> list[np.ndarray]:
        started = time.perf_counter()
        self._stats.batches += 1
        self._stats.forwarded_items += len(items)
        self._stats.largest_batch = max(self._stats.largest_batch, len(items))
        try:
            if len(items) == 1:
                return [self.engine.forward(items[0].request_id, items[0].inputs)]
            return self.engine.forward_batch(items)
        finally:
            self._stats.engine_seconds += time.perf_counter() - started


def _in_order(jobs: list[Job]) -> list[list[Job]]:
    """Jobs in order: each call alone, each run of consecutive forwards as one group."""
    groups: list[list[Job]] = []
    for job in jobs:
        if job.run is None and groups and groups[-1][0].run is None:
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups
