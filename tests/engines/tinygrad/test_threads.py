"""How many CPU threads a tinygrad step uses by default."""

from __future__ import annotations

import pytest

from exoquic.engines.registry import THREADS_VARIABLE
from exoquic.engines.tinygrad import runner


@pytest.mark.parametrize(("cpus", "threads"), [(1, 1), (2, 2), (3, 3), (4, 3), (8, 4), (64, 4)])
def test_default_threads_leave_a_cpu_free_from_four_on(
    monkeypatch: pytest.MonkeyPatch, cpus: int, threads: int
) -> None:
    monkeypatch.delenv(THREADS_VARIABLE, raising=False)
    monkeypatch.setattr(runner, "usable_cpus", lambda: cpus)
    assert runner.worker_threads() == threads


def test_the_environment_overrides_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(THREADS_VARIABLE, "1")
    monkeypatch.setattr(runner, "usable_cpus", lambda: 8)
    assert runner.worker_threads() == 1
