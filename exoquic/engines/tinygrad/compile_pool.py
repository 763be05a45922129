"""tinygrad's pool of compiler processes, kept only while kernels are compiled.

tinygrad compiles kernels in a `multiprocessing` pool of spawned processes
(`tinygrad.engine.worker`), created on first use and closed at interpreter
exit. A serving node compiles nothing after its warm-up, and a pool that
outlives it breaks stopping: SIGTERM or Ctrl-C to the node's process group
also kills the pool's workers, the pool's maintenance thread respawns them,
and the exit-time finalizer then waits for a queue lock that a killed worker
held, so `exoquic up` hangs, or leaves orphaned workers behind.

So the engine stops the pool as soon as a load and warm-up are done (a later
load makes a new one), and the node stops it again on its way out. Stopping
kills the workers outright instead of asking them to finish, and cancels the
finalizer that would wait for them. Cold compiles keep the pool's speed-up
(about 2x on two cores); a serving node has no child processes.
"""

from __future__ import annotations

import logging
from multiprocessing import pool as mp_pool
from typing import Any

log = logging.getLogger(__name__)

_JOIN_TIMEOUT = 1.0


def stop_compile_pool() -> None:
    """Kill tinygrad's compiler processes now, if it has any (safe to call anytime)."""
    from tinygrad.engine import worker

    pool: Any = worker.worker_pool
    if pool is None:
        return
    worker.worker_pool = None
    # Stop the maintenance thread first, or it respawns the workers we kill.
    pool._state = mp_pool.TERMINATE
    pool._worker_handler._state = mp_pool.TERMINATE
    pool._change_notifier.put(None)
    pool._worker_handler.join(_JOIN_TIMEOUT)
    for process in pool._pool:
        process.kill()
    for process in pool._pool:
        process.join(_JOIN_TIMEOUT)
    # The pool's finalizer would wait on a lock a killed worker may hold.
    pool._terminate.cancel()
    log.debug("stopped %d tinygrad compiler processes", len(pool._pool))
