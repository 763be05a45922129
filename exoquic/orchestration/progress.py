"""Model preparation progress: this node's state, and when to tell the peers.

A node prepares its shard in stages: fetch the shard's files (a download for
hub models, then reading them from disk), load them into the engine, ready;
any stage may fail. `Preparation` holds this node's stage and turns it into
the `ModelProgress` message its peers keep; `ProgressGate` decides when to
send it (only when it changed, at most once per interval). Both are pure:
the caller passes the time (`trio.current_time()`), as in a sans-IO protocol.
"""

from __future__ import annotations

import math
from typing import Literal

from exoquic.download.progress import DownloadProgress
from exoquic.wire.messages import MAX_MODEL_ID_LENGTH, MAX_REASON_LENGTH, ModelProgress

PROGRESS_INTERVAL = 0.5
"""At most two progress messages a second per node (and samples of a running download)."""
RATE_WINDOW = 1.0
"""The download rate is measured over at least this many seconds."""

Stage = Literal["fetching", "loading", "ready", "failed"]


class Preparation:
    """This node's preparation of its shard of `model`, as `ModelProgress`.

    The cluster moves it through the stages (`start`, `loading`, `ready`,
    `fail`) from its trio task; the `DownloadProgress` that `start` returns
    is fed by download threads. Before `start` there is nothing to report.
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self._stage: Stage | None = None
        self._download = DownloadProgress(model)
        self._error = ""
        self._rate = 0
        self._rate_mark = (0.0, 0)  # (time, bytes done) the rate is measured from

    @property
    def stage(self) -> Stage | None:
        return self._stage

    def start(self, now: float) -> DownloadProgress:
        """A new shard is being prepared; the callback its download reports to."""
        self._stage, self._error = "fetching", ""
        self._download = DownloadProgress(self.model)
        self._rate, self._rate_mark = 0, (now, 0)
        return self._download

    def loading(self) -> None:
        """The files are read; the engine is taking the weights."""
        self._stage = "loading"

    def ready(self) -> None:
        self._stage, self._error = "ready", ""

    def fail(self, error: str) -> None:
        self._stage, self._error = "failed", error or "failed"

    def current(self, now: float) -> ModelProgress | None:
        """The state to report now (None before the first `start`)."""
        if self._stage is None:
            return None
        snapshot = self._download.snapshot()
        files, total = snapshot["files"], snapshot["total"]
        # A file that grew past its announced size is fetched again: never report done > total.
        done = min(total, snapshot["done"])
        files_done = sum(1 for f in files if f["done"] >= f["total"])
        phase = self._phase(files_done < len(files))
        return ModelProgress(
            model=self.model[:MAX_MODEL_ID_LENGTH],
            phase=phase,
            done_bytes=done,
            total_bytes=total,
            files_done=files_done,
            files_total=len(files),
            bytes_per_second=self._measure_rate(done, now) if phase == "downloading" else 0,
            error=self._error[:MAX_REASON_LENGTH] if phase == "failed" else "",
        )

    def _phase(self, files_missing: bool) -> str:
        if self._stage == "fetching":
            # Fetching reads the files from disk once the download is over.
            return "downloading" if files_missing else "loading"
        assert self._stage is not None
        return self._stage

    def _measure_rate(self, done: int, now: float) -> int:
        since, then = self._rate_mark
        if now - since >= RATE_WINDOW:
            self._rate = int(max(0, done - then) / (now - since))
            self._rate_mark = (now, done)
        return self._rate


class ProgressGate:
    """When to send this node's `ModelProgress` to its peers.

    A state goes out only if it differs from the last one sent, and at most
    once per `interval`; a change that comes too soon waits, and only the
    latest state is sent then (intermediate ones are skipped).
    """

    def __init__(self, interval: float = PROGRESS_INTERVAL) -> None:
        self.interval = interval
        self._sent: ModelProgress | None = None
        self._sent_at = -math.inf

    def poll(self, state: ModelProgress | None, now: float) -> ModelProgress | None:
        """`state` if it should be sent now (then counted as sent), else None."""
        if state is None or state == self._sent or now < self._sent_at + self.interval:
            return None
        self._sent, self._sent_at = state, now
        return state

    def next_poll(self, state: ModelProgress | None, now: float) -> float:
        """When to `poll` again if nothing else wakes the caller: when a held-back
        change may go out, every interval while a download or load runs (its
        bytes arrive without notice), else never (`math.inf`)."""
        if state is None:
            return math.inf
        if state != self._sent:
            return max(now, self._sent_at + self.interval)
        if state.phase in ("downloading", "loading"):
            return now + self.interval
        return math.inf
