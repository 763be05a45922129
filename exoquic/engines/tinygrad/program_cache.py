"""tinygrad's lowered kernels kept in its on-disk cache, so a restart does not lower them again.

tinygrad caches compiled binaries on disk (by their C source), but turns every
kernel's graph into that source again in every new process (`to_program`:
optimizing, linearizing and rendering, in Python, in a pool of spawned compiler
processes). With the binaries cached that was still most of a node's warm-up
(about 2 s of 3 on two cores, the pool's start included).

`install()` swaps tinygrad's in-memory table of lowered kernels for one that
also reads and writes tinygrad's own SQLite cache (same file, same switch:
CACHELEVEL=0 turns both off). Entries are keyed by tinygrad's own key (the
kernel graph's hash, the renderer and target, the settings that change the
code) plus tinygrad's version, and hold the finished program, binary included,
pickled the way tinygrad's compiler pool sends it between processes.
"""

from __future__ import annotations

import hashlib
import logging
from importlib import metadata
from typing import Any

import tinygrad.codegen
import tinygrad.engine.realize
from tinygrad.helpers import diskcache_get, diskcache_put
from tinygrad.uop.ops import UOp

log = logging.getLogger(__name__)

TABLE = "exoquic_program"
_TINYGRAD_VERSION = metadata.version("tinygrad")


def disk_key(key: tuple[Any, ...]) -> str:
    """The on-disk key of one of tinygrad's `to_program_key` tuples.

    Its parts are bytes, a renderer class, the renderer's target and settings
    values, whose reprs are stable across processes.
    """
    text = repr((_TINYGRAD_VERSION, *key))
    return hashlib.sha256(text.encode()).hexdigest()


class DiskBackedPrograms(dict[tuple[Any, ...], UOp]):
    """tinygrad's `to_program_cache` that also asks, and fills, the disk cache."""

    def __contains__(self, key: object) -> bool:
        if dict.__contains__(self, key):
            return True
        if not isinstance(key, tuple):
            return False
        found = diskcache_get(TABLE, disk_key(key))
        if not isinstance(found, UOp):
            return False
        dict.__setitem__(self, key, found)
        return True

    def __missing__(self, key: tuple[Any, ...]) -> UOp:
        if key in self:  # loads it from disk
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def get(self, key: tuple[Any, ...], default: Any = None) -> Any:
        if key in self:  # loads it from disk
            return dict.__getitem__(self, key)
        return default

    def __setitem__(self, key: tuple[Any, ...], program: UOp) -> None:
        dict.__setitem__(self, key, program)
        try:
            diskcache_put(TABLE, disk_key(key), program)
        except Exception as e:  # a full disk or a locked cache only costs speed
            log.debug("not caching a lowered kernel: %s", e)


def install() -> None:
    """Back tinygrad's table of lowered kernels with its disk cache (once; idempotent).

    Both modules hold the table under the same name: codegen's `to_program` and
    realize's `lower_and_compile` (which lowers in the compiler pool).
    """
    current = tinygrad.codegen.to_program_cache
    if isinstance(current, DiskBackedPrograms):
        return
    programs = DiskBackedPrograms(current)
    tinygrad.codegen.to_program_cache = programs
    tinygrad.engine.realize.to_program_cache = programs
