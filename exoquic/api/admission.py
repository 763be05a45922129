"""Admission control: how many generations this node's API runs at once.

Without a limit an overloaded node queues every request and each client just
waits longer. With one, a request beyond the limit waits a short while for a
slot (`queue_timeout_s`, in a queue of at most `max_queued`) and is otherwise
refused at once with a 429 and a `Retry-After`, which the official OpenAI
clients honour by retrying later (or another node, behind a balancer).

A `Slot` is held from admission until the generation ends: the whole reply is
sent, the stream ends, or the client disconnects (which cancels the handler or
the stream body). Release is idempotent, so every exit path may call it.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

import trio

from exoquic.api.errors import APIError
from exoquic.api.limits import AdmissionLimits

# The official Python SDK honours Retry-After up to 60 s (older releases) or 120 s.
MAX_RETRY_AFTER_S = 60
# Weight of the newest hold time in the running mean behind Retry-After.
HOLD_SMOOTHING = 0.2


class Slot:
    """One admitted generation; free it with `release()` or `with slot:`."""

    def __init__(self, admission: Admission) -> None:
        self._admission: Admission | None = admission
        # Not trio's clock: a slot may be released by a finalizer, outside any run.
        self._since = time.monotonic()

    def release(self) -> None:
        """Give the slot back (once; later calls do nothing)."""
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._release(time.monotonic() - self._since)

    def release_with(self, owner: object) -> None:
        """Also release when `owner` is garbage-collected: the net under a
        response body that the server drops without ever iterating it (a
        disconnect between the handler's return and the first byte sent)."""
        token = trio.lowlevel.current_trio_token()
        finalizer = weakref.finalize(owner, _release_in_run, token, self.release)
        finalizer.atexit = False

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class Admission:
    """Counts the generations this node's API runs and refuses those beyond the limit.

    Lives inside one trio run (the app's): waiting uses trio's FIFO semaphore,
    so slots go to waiters in arrival order and a newcomer never jumps the queue.
    """

    def __init__(self, limits: AdmissionLimits | None = None) -> None:
        self.limits = limits or AdmissionLimits()
        self.in_flight = 0
        self.waiting = 0
        self.refused = 0
        self._mean_hold_s: float | None = None
        limit = self.limits.max_requests
        self._slots = trio.Semaphore(limit, max_value=limit) if limit else None

    async def admit(self) -> Slot:
        """A slot for one generation, waiting for one as the limits allow.

        Raises an APIError 429 (with `Retry-After`) when none frees in time.
        """
        if self._slots is not None:
            try:
                self._slots.acquire_nowait()
            except trio.WouldBlock:
                await self._wait_for_slot(self._slots)
        self.in_flight += 1
        return Slot(self)

    async def _wait_for_slot(self, slots: trio.Semaphore) -> None:
        timeout = self.limits.queue_timeout_s
        if timeout <= 0 or self.waiting >= self.limits.max_queued:
            raise self._refusal()
        self.waiting += 1
        try:
            # A cancel from outside (the client left) propagates; only our own
            # deadline is a refusal. A slot handed over is ours even if the
            # deadline passes at the same moment (trio's acquire guarantees it).
            with trio.move_on_after(timeout) as waited:
                await slots.acquire()
        finally:
            self.waiting -= 1
        if waited.cancelled_caught:
            raise self._refusal()

    def _release(self, held_s: float) -> None:
        self.in_flight -= 1
        mean = self._mean_hold_s
        self._mean_hold_s = held_s if mean is None else mean + HOLD_SMOOTHING * (held_s - mean)
        if self._slots is not None:
            self._slots.release()

    def retry_after_s(self) -> int:
        """Seconds a refused client should wait: one slot frees about every
        mean-hold-time / limit seconds; 1 before any generation has ended."""
        return retry_after_s(self._mean_hold_s, self.limits.max_requests)

    def _refusal(self) -> APIError:
        self.refused += 1
        limit = self.limits.max_requests
        retry = self.retry_after_s()
        return APIError(
            429,
            f"this node is running its limit of {limit} generation{'s' * (limit != 1)} "
            f"at once (exoquic up --max-requests); retry in {retry} s",
            type="requests",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(retry)},
        )

    def statistics(self) -> dict[str, Any]:
        """What `/health` and `/v1/topology` show under `admission`."""
        return {
            "in_flight": self.in_flight,
            "limit": self.limits.max_requests or None,
            "waiting": self.waiting,
            "max_queued": self.limits.max_queued,
            "queue_timeout_s": self.limits.queue_timeout_s,
            "refused": self.refused,
        }


def _release_in_run(token: trio.lowlevel.TrioToken, release: Callable[[], None]) -> None:
    """Run `release` in the trio run's thread: garbage collection may call a
    finalizer from any thread (an engine worker's too), and waking a waiter
    must happen in the run."""
    try:
        token.run_sync_soon(release)
    except trio.RunFinishedError:
        release()  # the run is over: nobody waits, only the counters change


def retry_after_s(mean_hold_s: float | None, max_requests: int) -> int:
    """Whole seconds until a slot likely frees, between 1 and 60."""
    if mean_hold_s is None or max_requests <= 0:
        return 1
    return max(1, min(MAX_RETRY_AFTER_S, math.ceil(mean_hold_s / max_requests)))
