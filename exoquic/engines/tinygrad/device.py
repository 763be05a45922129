"""The one tinygrad device this engine runs on, and a check that it works here.

The device is named explicitly on every tensor instead of relying on tinygrad's
environment variables. In tinygrad 0.14 the CPU device is `"CPU"`; it renders
kernels as C and compiles them with clang (its first renderer), which the fast
quantized kernels and the direct kernel dispatcher rely on.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import tinygrad.helpers
from tinygrad import Device, Tensor

from exoquic.engines.tinygrad import program_cache

DEVICE = "CPU"

# tinygrad's graph building, scheduling and JIT capture use process-wide state that
# is not thread-safe. Engines run in worker threads (one per node, maybe several
# nodes in one test process), so everything that builds or traces tinygrad graphs
# holds this lock; replaying a traced step (runner.KernelProgram) does not need it.
TINYGRAD_LOCK = threading.RLock()


def _use_one_cache_connection_per_thread() -> None:
    """Give each thread its own connection to tinygrad's on-disk kernel cache.

    tinygrad keeps a single SQLite connection in a module global, and SQLite
    refuses a connection used from a thread other than its creator's. A node
    compiles on more than one thread (the availability check runs where the
    node starts, the engine on its own worker thread), so without this the
    engine thread's first compile fails.
    """
    opened = tinygrad.helpers.db_connection
    local = threading.local()
    opening = threading.Lock()  # `opened` reads and writes the shared global

    def db_connection() -> object:
        if getattr(local, "connection", None) is None:
            with opening:
                tinygrad.helpers._db_connection = None
                local.connection = opened()
        return local.connection

    tinygrad.helpers.db_connection = db_connection


_use_one_cache_connection_per_thread()


def _default_to_our_device() -> None:
    """Make `DEVICE` tinygrad's default device unless DEV says otherwise.

    Any tensor op that meets a Python constant asks for the default device, and
    without DEV tinygrad finds one by opening every backend it knows in turn
    (METAL, AMD, NV, CUDA, ...): ~7 s on two cores, and a GPU context we never
    use. Spawned compiler processes inherit the choice through the environment.
    """
    if not tinygrad.helpers.DEV.device:
        tinygrad.helpers.DEV.value = DEVICE
        os.environ.setdefault("DEV", DEVICE)


_default_to_our_device()
program_cache.install()


def renderer_name() -> str:
    """The class name of the renderer tinygrad picked for `DEVICE`."""
    return type(Device[DEVICE].renderer).__name__


def check_device() -> str | None:
    """None if `DEVICE` compiles and runs a kernel with clang, else why not."""
    try:
        name = renderer_name()
        if name != "ClangRenderer":
            return f"tinygrad's CPU device uses {name}, not clang (is DEV set in the environment?)"
        got = (Tensor(np.arange(4, dtype=np.float32), device=DEVICE) * 2 + 1).numpy()
    except Exception as e:  # any failure to compile or run means "not available"
        return f"tinygrad could not compile a kernel: {type(e).__name__}: {e}"
    if not np.array_equal(got, np.arange(4, dtype=np.float32) * 2 + 1):
        return f"tinygrad computed a wrong result: {got}"
    return None
