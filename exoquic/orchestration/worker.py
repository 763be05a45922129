"""Runs an engine in one worker thread and schedules the work queued for it.

Engines are blocking and not thread-safe, so every call goes through one
`EngineWorker` task, and runs on one dedicated thread: some engine libraries
tie state to the thread that created it (tinygrad's kernel cache is an SQLite
connection), so a pool that hands calls to whichever thread is free breaks them.

Work runs in queue order, with two liberties among neighbouring forward steps
(steps of different requests do not depend on each other):

- decode steps (one new position each) of different requests run together as
  one `Engine.forward_batch` call, and their results are handed back as soon
  as that batch ends; while it runs, the next batch gathers (a ring caps the
  batch with `limit_batches`, so that its nodes work on different groups of
  requests at once: see `Ring`);
- a prompt longer than `prefill_chunk` positions runs in chunks, and decode
  steps queued meanwhile take turns with its chunks, so one long prompt does
  not stall every other request's next token (and, around a ring, requests
  stay spread out instead of moving in one convoy: each node can work on one
  group while its neighbour works on another).

Engine calls (shard loads, releases) never move: everything queued before one
runs first, and nothing queued after it overtakes it.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import numpy as np
import trio

from exoquic.engines.base import Engine, ForwardItem
from exoquic.models.weights import ShardWeights

T = TypeVar("T")


@dataclass(eq=False)  # jobs are compared by identity
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
    abandoned: bool = False  # its caller was cancelled: skip it, or stop between chunks
    progress: int = 0  # positions of a chunked prefill already run
    outputs: list[np.ndarray] = field(default_factory=list)  # of those chunks
    worker_stopped: trio.Event = field(default_factory=trio.Event)  # the worker's, when queued

    async def wait(self) -> Any:
        """The job's result (or its exception).

        A caller cancelled while the job is still queued abandons it, so a
        disconnected client's prefill costs nothing. Once an engine call of
        the job runs, the caller waits for that call to end even when
        cancelled (the engine's caches must not be left half-updated); a
        chunked prefill then stops before its next chunk.
        """
        try:
            await self.done.wait()
        except trio.Cancelled:
            self.abandoned = True
            if not self.started:
                raise
            with trio.CancelScope(shield=True):
                await _first_of(self.done, self.worker_stopped)
            raise
        if self.error is not None:
            raise self.error
        return self.result


async def _first_of(*events: trio.Event) -> None:
    """Wait until any of `events` is set."""
    async with trio.open_nursery() as nursery:
        for event in events:

            async def wait(event: trio.Event = event) -> None:
                await event.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(wait)


@dataclass
class WorkerStatistics:
    batches: int = 0
    forwarded_items: int = 0
    largest_batch: int = 0
    compute_seconds: float = 0.0  # forward calls, from queueing on the thread to the result
    engine_seconds: float = 0.0  # forward calls, inside the engine thread only


class _Abandoned(Exception):
    """What an abandoned job holds instead of a result (its caller is gone)."""


# Positions per chunk of a long prompt: one of the tinygrad engine's prefill
# buckets (so no chunk is padded), big enough to keep prefill efficient. On a
# 2-core CPU a chunk of the default model takes about a second: the longest a
# decode step waits behind someone else's prompt.
PREFILL_CHUNK = 128


class EngineWorker:
    """Serialises engine access through one task; use `run` in a nursery."""

    def __init__(
        self, engine: Engine, max_batch: int = 16, prefill_chunk: int = PREFILL_CHUNK
    ) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self._batch_limit = max_batch
        self._send, self._receive = trio.open_memory_channel[Job](math.inf)
        self._stats = WorkerStatistics()
        self._stopped = trio.Event()
        self._engine_wait: trio.CancelScope | None = None

    def statistics(self) -> WorkerStatistics:
        return self._stats

    @property
    def batch_limit(self) -> int:
        """Most decode steps per batch now (see `limit_batches`)."""
        return self._batch_limit

    def limit_batches(self, steps: int) -> None:
        """Run at most `steps` decode steps per batch from now on (within 1..max_batch)."""
        self._batch_limit = max(1, min(steps, self.max_batch))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exoquic-engine")
        self._thread = thread
        try:
            task_status.started()
            await self._serve()
        finally:
            # Do not wait for an engine call still running (a load or kernel compile
            # when the node stops): it cannot be interrupted, and its caller is gone.
            thread.shutdown(wait=False, cancel_futures=True)

    async def _in_engine_thread(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the engine's own thread and wait for it without blocking Trio."""
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future = self._thread.submit(fn)
        future.add_done_callback(lambda _: token.run_sync_soon(done.set))
        # Not cancellable: the engine call runs to the end either way, and its
        # result must be delivered (see `Job.wait`), unless the node is stopping.
        with trio.CancelScope(shield=not self._stopped.is_set()) as self._engine_wait:
            await done.wait()
        self._engine_wait = None
        return future.result()

    def stop(self) -> None:
        """The node is stopping: stop waiting for the engine call in progress (a
        load or compile cannot be interrupted, and its result is not needed), so
        cancelling the worker's task ends it at once."""
        self._stopped.set()  # callers cancelled now stop waiting for their jobs
        if self._engine_wait is not None:
            self._engine_wait.shield = False

    async def _serve(self) -> None:
        pending: list[Job] = []
        decode_turn = True  # decode batches and prefill chunks alternate when both wait
        while True:
            if not pending:
                pending.append(await self._receive.receive())
            await _let_callers_queue()
            pending += self._drain()
            pending = [job for job in pending if job.started or not job.abandoned]
            if not pending:
                continue
            head = pending[0]
            if head.run is not None:  # an engine call: everything before it has run
                pending.pop(0)
                head.started = True
                await self._run_call(head)
                continue
            forwards = itertools.takewhile(lambda job: job.run is None, pending)
            heads = _first_of_each_request(forwards)
            batch = [job for job in heads if _is_decode(job)][: self._batch_limit]
            prefill = next((job for job in heads if job not in batch), None)
            if batch and (decode_turn or prefill is None):
                for job in batch:
                    pending.remove(job)
                    job.started = True
                await self._run_forwards(batch)
                decode_turn = False
            else:
                assert prefill is not None
                prefill.started = True
                if await self._run_prefill_chunk(prefill):
                    pending.remove(prefill)
                decode_turn = True

    async def forward(self, request_id: str, inputs: np.ndarray) -> np.ndarray:
        """Queue one forward step and wait for its output (see `Engine.forward`)."""
        output: np.ndarray = await self.forward_nowait(request_id, inputs).wait()
        return output

    async def load(self, weights: ShardWeights, warm_up: bool = True) -> None:
        """Load a shard into the engine, then warm it up (see `Engine.warm_up`): both
        are queued at once, so nothing queued later runs between them. Without
        `warm_up` the first request makes the steps it needs (`exoquic run`)."""
        loading = self.call_nowait(lambda: self.engine.load(weights))
        warming = self.call_nowait(self.engine.warm_up) if warm_up else None
        await loading.wait()
        if warming is not None:
            await warming.wait()

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Run any other engine method (load, release...) in the worker thread, in order."""
        return await self.call_nowait(fn).wait()

    def forward_nowait(self, request_id: str, inputs: np.ndarray, all_logits: bool = False) -> Job:
        """Queue one forward step now (jobs run in the order they are queued);
        `all_logits`: see `ForwardItem`."""
        return self._queue(Job(run=None, item=ForwardItem(request_id, inputs, all_logits)))

    def call_nowait(self, fn: Callable[[], Any]) -> Job:
        """Queue an engine call now, after everything already queued."""
        return self._queue(Job(run=fn))

    def _queue(self, job: Job) -> Job:
        job.worker_stopped = self._stopped
        self._send.send_nowait(job)
        return job

    def _drain(self) -> list[Job]:
        jobs: list[Job] = []
        while True:
            try:
                jobs.append(self._receive.receive_nowait())
            except trio.WouldBlock:
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

    async def _run_prefill_chunk(self, job: Job) -> bool:
        """Run the next chunk of a prefill; True once the job is done (or failed)."""
        assert job.item is not None
        inputs = job.item.inputs
        if job.abandoned:  # cancelled between chunks: the caller is gone
            job.error = _Abandoned()
            job.done.set()
            return True
        end = min(job.progress + self.prefill_chunk, len(inputs))
        chunk = replace(job.item, inputs=inputs[job.progress : end])
        started = time.perf_counter()
        try:
            output = await self._in_engine_thread(lambda: self._forward_batch([chunk])[0])
        except Exception as exc:
            job.error = exc
            job.done.set()
            return True
        seconds = time.perf_counter() - started
        self._stats.compute_seconds += seconds
        job.seconds += seconds
        job.outputs.append(output)
        job.progress = end
        if end < len(inputs):
            return False
        # Hidden states (T, D) and all_logits' (T, vocab) come in pieces; other
        # logits (last shard) are the last position's.
        job.result = np.concatenate(job.outputs) if output.ndim == 2 else output
        job.outputs = []
        job.done.set()
        return True

    def _forward_batch(self, items: list[ForwardItem]) -> list[np.ndarray]:
        started = time.perf_counter()
        self._stats.batches += 1
        self._stats.forwarded_items += len(items)
        self._stats.largest_batch = max(self._stats.largest_batch, len(items))
        try:
            if len(items) == 1 and not items[0].all_logits:
                return [self.engine.forward(items[0].request_id, items[0].inputs)]
            return self.engine.forward_batch(items)
        finally:
            self._stats.engine_seconds += time.perf_counter() - started


async def _let_callers_queue() -> None:
    """Yield before taking the queue: the tasks that the last results woke up (and
    that woke the worker) queue their next steps in their first moments, and they
    then join this batch instead of leaving a batch of one followed by the rest.
    Twice, because Trio may run this task first in each pass."""
    for _ in range(2):
        await trio.lowlevel.cancel_shielded_checkpoint()


def _first_of_each_request(forwards: Iterable[Job]) -> list[Job]:
    """Of queued forward steps, each request's first: the steps that may run now, in
    any order (a request's own steps run in order; different requests' are independent)."""
    heads: dict[str, Job] = {}
    for job in forwards:
        assert job.item is not None
        heads.setdefault(job.item.request_id, job)
    return list(heads.values())


def _is_decode(job: Job) -> bool:
    """One new position: a decode step, which batches with other requests' steps."""
    assert job.item is not None
    return len(job.item.inputs) == 1
