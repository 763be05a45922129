"""Download progress: a thread-safe aggregate the API can read, and a terminal bar.

Downloads report `(file, bytes done, total)` from worker threads through a
`ProgressCallback`. `DownloadProgress` is such a callback: it keeps the latest
count of every file so the API or UI can show `snapshot()` at any time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import TaskID

ProgressCallback = Callable[[str, int, int], None]
"""`callback(file, bytes_done, bytes_total)`; called from worker threads."""

_reporter: ContextVar[ProgressCallback | None] = ContextVar("download_reporter", default=None)


@contextmanager
def reporting_to(callback: ProgressCallback) -> Iterator[None]:
    """Within the block, shard downloads that were given no `progress` report to `callback`.

    How a caller learns about a download it does not start itself: the node's
    cluster wraps its shard loader (`NodeModel.load_shard`, built long before)
    in this. The setting follows the task into `trio.to_thread.run_sync`,
    which runs the function in a copy of the caller's context.
    """
    token = _reporter.set(callback)
    try:
        yield
    finally:
        _reporter.reset(token)


def current_reporter() -> ProgressCallback | None:
    """The callback set by the innermost `reporting_to` around this call, if any."""
    return _reporter.get()


@dataclass
class _FileCount:
    done: int
    total: int


class DownloadProgress:
    """The progress of one download, aggregated over its files.

    Pass it as the `progress` callback of `download_shard`; read it from any
    thread. `listeners` are called after every update (e.g. a terminal bar).
    """

    def __init__(self, repo_id: str = "", *listeners: ProgressCallback) -> None:
        self.repo_id = repo_id
        self._listeners = listeners
        self._files: dict[str, _FileCount] = {}
        self._lock = threading.Lock()
        self._started = time.monotonic()

    def __call__(self, file: str, done: int, total: int) -> None:
        with self._lock:
            self._files[file] = _FileCount(done, total)
        for listener in self._listeners:
            listener(file, done, total)

    @property
    def done(self) -> int:
        with self._lock:
            return sum(f.done for f in self._files.values())

    @property
    def total(self) -> int:
        with self._lock:
            return sum(f.total for f in self._files.values())

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready view: overall and per-file bytes, fraction, elapsed seconds."""
        with self._lock:
            counts = sorted(self._files.items())
        done = sum(f.done for _, f in counts)
        total = sum(f.total for _, f in counts)
        files = [{"name": name, "done": f.done, "total": f.total} for name, f in counts]
        return {
            "repo_id": self.repo_id,
            "done": done,
            "total": total,
            "fraction": done / total if total else 0.0,
            "complete": bool(counts) and done >= total,
            "elapsed_s": round(time.monotonic() - self._started, 3),
            "files": files,
        }


@contextmanager
def terminal_progress(
    description: str, console: Console | None = None
) -> Iterator[ProgressCallback]:
    """A rich progress bar (one line per file plus a total) fed by the yielded callback."""
    # Imported here: nodes track progress without a terminal bar, and rich is slow to import.
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        overall = bar.add_task(description, total=0)
        tasks: dict[str, TaskID] = {}
        counts: dict[str, tuple[int, int]] = {}
        lock = threading.Lock()

        def update(file: str, done: int, total: int) -> None:
            with lock:
                if file not in tasks:
                    tasks[file] = bar.add_task(f"  {file}", total=total)
                counts[file] = (done, total)
                all_done = sum(d for d, _ in counts.values())
                all_total = sum(t for _, t in counts.values())
            bar.update(tasks[file], completed=done, total=total)
            bar.update(overall, completed=all_done, total=all_total)

        yield update
