"""Lowered kernels kept in tinygrad's disk cache: a second process lowers nothing again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Run in a fresh process each (the cache is what processes share): compute a
# kernel no other test makes; with LOWERING=fail, lowering any kernel raises.
SCRIPT = """
import os, numpy as np, tinygrad.codegen
from exoquic.engines.tinygrad.device import DEVICE
from tinygrad import Device, Tensor

def refuse(*args):
    raise AssertionError("lowered a kernel again")

Device[DEVICE]  # opening the device lowers its own helper programs
if os.environ["LOWERING"] == "fail":
    tinygrad.codegen.do_to_program = refuse
x = Tensor(np.arange(12, dtype=np.float32).reshape(3, 4), device=DEVICE)
print(((x * 3.25 - 1.5).exp2().sum(axis=1)).numpy().tolist())
"""


def run(cache: Path, lowering: str, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CACHEDB": str(cache), "LOWERING": lowering, "PARALLEL": "0", **extra}
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )


def test_a_second_process_reuses_the_lowered_kernels(tmp_path: Path) -> None:
    cache = tmp_path / "cache.db"
    first = run(cache, "allow")
    assert first.returncode == 0, first.stderr
    second = run(cache, "fail")
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout


def test_without_the_cache_a_new_process_lowers_again(tmp_path: Path) -> None:
    # The check above can fail: an empty cache makes the refusing process lower.
    second = run(tmp_path / "cache.db", "fail")
    assert second.returncode != 0
    assert "lowered a kernel again" in second.stderr


def test_cachelevel_zero_turns_it_off(tmp_path: Path) -> None:
    cache = tmp_path / "cache.db"
    assert run(cache, "allow").returncode == 0
    assert run(cache, "fail", CACHELEVEL="0").returncode != 0
