"""Runs an engine in one worker thread and batches the work queued for it.

Engines are blocking and not thread-safe, so every call goes through one
`EngineWorker` task. Requests queue their forward steps; the worker takes
everything queued at that moment and hands it to `Engine.forward_batch` in a
single thread call. While one batch runs, the next one gathers, so concurrent
requests' decode steps ride together (decode is memory-bound: one pass over
the weights serves the whole batch).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trio

from exoquic.engines.base import Engine, ForwardItem


@dataclass
class _Job:
    run: Callable[[], Any] | None  # None for forward jobs, which are batched
    item: ForwardItem | None = None
    done: trio.Event = field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass
class WorkerStatistics:
    batches: int = 0
    forwarded_items: int = 0
    largest_batch: int = 0


class EngineWorker:
    """Serialises engine access through one task; use `run` in a nursery."""

    def __init__(self, engine: Engine, max_batch: int = 16) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._send, self._receive = trio.open_memory_channel[_Job](math.inf)
        self._stats = WorkerStatistics()

    def statistics(self) -> WorkerStatistics:
        return self._stats

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for first in self._receive:
            jobs = [first, *self._drain(self.max_batch - 1)]
            calls = [job for job in jobs if job.run is not None]
            forwards = [job for job in jobs if job.run is None]
            for job in calls:
                await self._run_call(job)
            if forwards:
                await self._run_forwards(forwards)

    async def forward(self, request_id: str, inputs: np.ndarray) -> np.ndarray:
        """Queue one forward step and wait for its output (see `Engine.forward`)."""
        job = _Job(run=None, item=ForwardItem(request_id, inputs))
        output: np.ndarray = await self._submit(job)
        return output

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run any other engine method (load, release...) in the worker thread, in order."""
        return await self._submit(_Job(run=fn))

    async def _submit(self, job: _Job) -> Any:
        self._send.send_nowait(job)
        # The job runs to completion even if our caller is cancelled: the
        # engine's state (its caches) must not be left half-updated.
        with trio.CancelScope(shield=True):
            await job.done.wait()
        await trio.lowlevel.checkpoint_if_cancelled()
        if job.error is not None:
            raise job.error
        return job.result

    def _drain(self, limit: int) -> list[_Job]:
        jobs: list[_Job] = []
        while len(jobs) < limit:
            try:
                jobs.append(self._receive.receive_nowait())
            except trio.WouldBlock:
                break
        return jobs

    async def _run_call(self, job: _Job) -> None:
        assert job.run is not None
        try:
            job.result = await trio.to_thread.run_sync(job.run)
        except Exception as exc:
            job.error = exc
        job.done.set()

    async def _run_forwards(self, jobs: list[_Job]) -> None:
        items = [job.item for job in jobs if job.item is not None]
        try:
            outputs = await trio.to_thread.run_sync(self._forward_batch, items)
        except Exception as exc:
            # Callers check their context budget before queueing, so a failure
            # here is the engine's own; every request in the batch sees it.
            for job in jobs:
                job.error = exc
                job.done.set()
            return
        for job, output in zip(jobs, outputs, strict=True):
            job.result = output
            job.done.set()

    def _forward_batch(self, items: list[ForwardItem]) -> list[np.ndarray]:
        self._stats.batches += 1
        self._stats.forwarded_items += len(items)
        self._stats.largest_batch = max(self._stats.largest_batch, len(items))
        if len(items) == 1:
            return [self.engine.forward(items[0].request_id, items[0].inputs)]
        return self.engine.forward_batch(items)
