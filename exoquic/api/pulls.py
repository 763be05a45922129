"""`POST /api/pull`'s downloads: one per model at a time, off the event loop.

A pull runs `exoquic pull`'s code (`exoquic.download.pull`) in a thread of its
own, so neither the hub's latency nor hashing a large file ever stalls serving.
The thread is not tied to the request that started it: a client that goes
away (a browser tab reloaded) leaves the download running, and asking for the
same model again follows the download already under way instead of starting
a second one. Each listener reads the shared `DownloadProgress` a few times a
second and turns it into Ollama's NDJSON progress lines.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from quart import current_app

from exoquic.download.errors import DownloadCancelled, DownloadError, HubUnreachableError
from exoquic.download.progress import DownloadProgress
from exoquic.download.pull import PullTarget, parse_name

log = logging.getLogger(__name__)
TICK_S = 0.25  # how often a listener reads the progress


@dataclass
class PullJob:
    """One download and what became of it (written by its thread, read by listeners)."""

    key: str
    target: PullTarget
    progress: DownloadProgress = field(default_factory=DownloadProgress)
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    path: Path | None = None
    note: str | None = None  # a status to show instead of a download (a bundled model)
    error: DownloadError | None = None

    def run(self) -> None:
        """The thread's body: resolve the name, download, record the outcome."""
        from exoquic.download.pull import pull, resolve

        try:
            entry = self.target.entry
            if entry is not None and entry.bundled_package:
                self.note = f"{entry.id} ships with exoquic: nothing to download"
            else:
                self.path = pull(resolve(self.target), progress=self.progress, cancel=self.cancel)
        except DownloadError as e:
            self.error = e
        except Exception as e:  # a bug: report it to the client instead of dying silently
            log.exception("pull of %s failed", self.key)
            self.error = DownloadError(f"internal error while pulling: {e}")
        finally:
            self.finished.set()


class Pulls:
    """The pulls under way on this node, one per model."""

    def __init__(self) -> None:
        self._jobs: dict[str, PullJob] = {}
        self._lock = threading.Lock()

    def start(self, name: str) -> PullJob:
        """The job for `name`: the one under way, else a new one, started now.

        Raises DownloadError for a name `exoquic pull` would not take either.
        """
        target = parse_name(name)
        key = f"{target.label}:{target.tag or ''}"
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not job.finished.is_set():
                return job
            job = PullJob(key, target)
            self._jobs[key] = job
        thread = threading.Thread(target=self._run, args=(job,), name=f"exoquic-pull {key}")
        thread.daemon = True  # a pull must not hold the process open at exit
        thread.start()
        return job

    def _run(self, job: PullJob) -> None:
        try:
            job.run()
        finally:
            with self._lock:
                if self._jobs.get(job.key) is job:
                    del self._jobs[job.key]

    def running(self) -> list[PullJob]:
        with self._lock:
            return list(self._jobs.values())

    def cancel_all(self) -> None:
        """Stop every pull at its next chunk (the node is shutting down); what
        arrived stays in the cache for the next pull to continue."""
        for job in self.running():
            job.cancel.set()


async def progress_lines(job: PullJob) -> AsyncIterator[dict[str, Any]]:
    """Ollama's pull progress: "pulling manifest", a line per file whenever its
    count moves (`digest` is the file's name, `total` and `completed` bytes),
    then "success", or an `error` line."""
    yield {"status": "pulling manifest"}
    shown: dict[str, tuple[int, int]] = {}
    while True:
        finished = job.finished.is_set()  # read first: the last counts come before it
        for line in _moved_files(job.progress.snapshot()["files"], shown):
            yield line
        if finished:
            break
        await trio.sleep(TICK_S)
    if job.error is not None:
        yield {"error": str(job.error)}
        return
    if job.note:
        yield {"status": job.note}
    yield {"status": "success"}


def current_pulls() -> Pulls:
    """The app's pulls (`create_app` makes them)."""
    pulls: Pulls = current_app.config["EXOQUIC_PULLS"]
    return pulls


def _moved_files(
    files: list[dict[str, Any]], shown: dict[str, tuple[int, int]]
) -> list[dict[str, Any]]:
    """A line for each file whose counts changed since `shown` (which it updates)."""
    lines = []
    for f in files:
        counts = (f["done"], f["total"])
        if shown.get(f["name"]) != counts:
            shown[f["name"]] = counts
            lines.append(
                {
                    "status": f"pulling {f['name']}",
                    "digest": f["name"],
                    "total": f["total"],
                    "completed": f["done"],
                }
            )
    return lines


async def wait_for(job: PullJob) -> None:
    """Until the job has finished (for `"stream": false`)."""
    while not job.finished.is_set():
        await trio.sleep(TICK_S)


def error_status(error: DownloadError) -> int:
    """The HTTP status of a failed pull that was not streamed."""
    if isinstance(error, HubUnreachableError):
        return 502  # the hub, not the request, is at fault
    if isinstance(error, DownloadCancelled):
        return 503  # the node is shutting down
    return 500  # as Ollama: a pull that fails is its server's error
