"""Replays captured `TinyJit`s by calling their compiled kernels straight from C.

tinygrad 0.14 runs a captured JIT on the CPU device one kernel at a time from
Python (resolving buffers and arguments per kernel: ~50-100 us each), which
costs more than the kernels of a small model's decode step. `KernelTemplate`
flattens a captured JIT into a table of kernel addresses and arguments;
`KernelProgram` places templates one after another (one per layer, with that
layer's weight addresses filled in) and runs the whole table with one call
into a small C dispatcher (compiled with clang, which tinygrad's CPU device
needs anyway). Per step only the arguments that change are patched: the
addresses of the requests' KV caches and the values of symbolic variables
(positions).

The dispatcher can run the thread slices of kernels that tinygrad split by
`core_id` (and the C kernels of `custom`) on several threads.

This reads tinygrad internals (the captured linear, `ProgramInfo`, the CPU
program's load address), which is why `KernelTemplate.from_captured` refuses
anything it does not recognise; callers then keep using the JIT itself.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import tempfile
from collections.abc import Hashable
from dataclasses import dataclass

import numpy as np
from tinygrad import Tensor
from tinygrad.device import Buffer
from tinygrad.engine.jit import CapturedJit
from tinygrad.engine.realize import get_call_arg_uops, get_runtime, resolve_params
from tinygrad.uop.ops import Ops, UOp

from exoquic.engines.registry import engine_threads_setting
from exoquic.engines.tinygrad import COMPILER
from exoquic.engines.tinygrad.device import DEVICE

# Most arguments a kernel may take (tinygrad's CPU programs allow 63).
MAX_ARGS = 32

_DISPATCH_C = r"""
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>

#define MAX_ARGS @MAX_ARGS@
#define MAX_WORKERS 63
#define ROW (MAX_ARGS + 1)
typedef void (*kernel_fn)(@PARAMS@);

/* A table row is a kernel address and its arguments. A group is `parts` consecutive
   rows: the thread slices (core_id 0..parts-1) of one kernel, which may run concurrently.
   Slices are claimed from a shared counter, so a worker that the OS has not scheduled
   delays nothing: the calling thread then simply runs every slice itself. */
static void call(const uint64_t *e) { ((kernel_fn)e[0])(@ARGS@); }

static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static int workers = 0;
static atomic_int running = 0;  /* 1 while run_kernels executes: workers poll, else sleep */
/* The current group as one word, so a slice is claimed against a consistent snapshot:
   generation (bits 32-63) | slices (16-31) | next unclaimed slice (0-15). */
static _Atomic uint64_t ticket = 0;
static atomic_int done_parts = 0;  /* slices of the current group finished */
static const uint64_t *volatile group_rows;

static inline void relax(long *spins) {
  if (++*spins < 256) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  } else {
    sched_yield(); /* another process may want this core */
  }
}

/* Run unclaimed slices of group `generation` until none is left. While a claimed slice
   runs, the caller of run_kernels waits for it, so group_rows cannot change under it. */
static void run_slices(uint32_t generation) {
  uint64_t t = atomic_load(&ticket);
  for (;;) {
    if ((uint32_t)(t >> 32) != generation) return;
    const int parts = (int)((t >> 16) & 0xFFFF), next = (int)(t & 0xFFFF);
    if (next >= parts) return;
    if (!atomic_compare_exchange_weak(&ticket, &t, t + 1)) continue;
    call(group_rows + (long)next * ROW);
    atomic_fetch_add(&done_parts, 1);
    t = atomic_load(&ticket);
  }
}

static void *worker(void *arg) {
  (void)arg;
  uint32_t seen = 0;
  for (;;) {
    long spins = 0;
    uint32_t generation;
    while ((generation = (uint32_t)(atomic_load(&ticket) >> 32)) == seen) {
      if (!atomic_load(&running)) {
        pthread_mutex_lock(&sleep_lock);
        while (!atomic_load(&running)) pthread_cond_wait(&wake, &sleep_lock);
        pthread_mutex_unlock(&sleep_lock);
      } else {
        relax(&spins);
      }
    }
    seen = generation;
    run_slices(generation);
  }
  return 0;
}

static int start_workers(int wanted) {
  while (workers < wanted && workers < MAX_WORKERS) {
    pthread_t t;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    int failed = pthread_create(&t, &attr, worker, 0);
    pthread_attr_destroy(&attr);
    if (failed) break;
    workers++;
  }
  return workers;
}

/* Run `count` groups; groups[2 g] = first row, groups[2 g + 1] = slices. Returns the
   helper threads used (0: everything ran on the calling thread). */
int run_kernels(const uint64_t *table, const int64_t *groups, int64_t count, int threads) {
  pthread_mutex_lock(&run_lock);
  int helpers = threads > 1 ? start_workers(threads - 1) : 0;
  if (helpers) {
    pthread_mutex_lock(&sleep_lock);
    atomic_store(&running, 1);
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&sleep_lock);
  }
  for (int64_t g = 0; g < count; g++) {
    const uint64_t *rows = table + groups[2 * g] * ROW;
    const int parts = (int)groups[2 * g + 1];
    if (parts == 1 || !helpers) {
      for (int part = 0; part < parts; part++) call(rows + (long)part * ROW);
      continue;
    }
    group_rows = rows;
    atomic_store(&done_parts, 0);
    const uint32_t generation = (uint32_t)(atomic_load(&ticket) >> 32) + 1;
    atomic_store(&ticket, ((uint64_t)generation << 32) | ((uint64_t)parts << 16));
    run_slices(generation);
    long spins = 0;
    while (atomic_load(&done_parts) < parts) relax(&spins);
  }
  atomic_store(&running, 0);
  pthread_mutex_unlock(&run_lock);
  return helpers;
}
"""


def usable_cpus() -> int:
    """CPUs this process may run on."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux: respects taskset/cpusets
    return max(1, len(affinity(0)) if affinity else os.cpu_count() or 1)


def worker_threads() -> int:
    """Default threads per step: `EXOQUIC_ENGINE_THREADS` if set, else every usable CPU
    up to 4, leaving one to the node (event loop, network) from 4 CPUs on.

    On 2 CPUs both go to the engine: the event loop needs ~6% of a core during decode,
    and a step's slices are claimed from a shared counter, so a helper thread the OS
    preempts delays nothing (measured on 2 cores: 1 thread 48 tok/s, 2 threads 80)."""
    configured = engine_threads_setting()
    if configured is not None:
        return configured
    cpus = usable_cpus()
    return max(1, min(cpus - 1 if cpus >= 4 else cpus, 4))


class UnsupportedGraph(Exception):
    """The captured JIT holds something other than plain CPU kernels."""


@functools.cache
def _dispatcher() -> ctypes._NamedFuncPointer:
    """The compiled `run_kernels` (built once per machine, cached in the temp folder).

    Every kernel is called with MAX_ARGS uint64 arguments: passing more integer
    arguments than a function declares is harmless in the C calling conventions
    of x86-64 and arm64 (the caller owns the stack).
    """
    source = (
        _DISPATCH_C.replace("@MAX_ARGS@", str(MAX_ARGS))
        .replace("@PARAMS@", ", ".join(["uint64_t"] * MAX_ARGS))
        .replace("@ARGS@", ", ".join(f"e[{i + 1}]" for i in range(MAX_ARGS)))
    )
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    folder = os.path.join(tempfile.gettempdir(), f"exoquic-tinygrad-{os.getuid()}")
    os.makedirs(folder, exist_ok=True)
    library = os.path.join(folder, f"dispatch-{digest}.so")
    if not os.path.exists(library):
        c_file = library.removesuffix(".so") + f".{os.getpid()}.c"
        with open(c_file, "w") as f:
            f.write(source)
        partial = f"{library}.{os.getpid()}"
        command = [COMPILER, "-O2", "-shared", "-fPIC", "-pthread", "-o", partial, c_file]
        subprocess.run(command, check=True)
        os.replace(partial, library)  # atomic: concurrent processes never load half a file
        os.unlink(c_file)
    fn = ctypes.CDLL(library).run_kernels
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def buffer_address(t: Tensor) -> int:
    """The address of a realized tensor's memory on the CPU device."""
    return _address(t.uop)


def _address(u: UOp) -> int:
    buf = u.buffer
    if not isinstance(buf, Buffer):
        raise UnsupportedGraph("multi-device buffers are not supported")
    return int(buf.ensure_allocated().get_buf(DEVICE).va_addr)


@dataclass(frozen=True)
class KernelTemplate:
    """The flattened kernels of one captured JIT, before its inputs and output are placed.

    cells: for every JIT input slot, and for the output buffer (last entry), the
    (row, column) table positions holding its address; variables: likewise per
    variable name.
    """

    table: np.ndarray  # (rows, 1 + MAX_ARGS) uint64: kernel address, arguments
    groups: np.ndarray  # (kernels, 2) int64: first row, thread slices
    cells: list[np.ndarray]  # per input slot, then the output: (n, 2) intp
    variables: dict[str, np.ndarray]  # name -> (n, 2) intp
    names: list[str]  # kernel name of each group

    @classmethod
    def from_captured(
        cls, captured: CapturedJit, inputs: list[Tensor], output: Tensor
    ) -> KernelTemplate:
        """Flatten a JIT's kernels; `inputs` are its input tensors in the JIT's order."""
        input_uops = tuple(t.uop.base for t in inputs)
        rows: list[list[int]] = []
        groups: list[tuple[int, int]] = []
        names: list[str] = []
        input_cells: list[list[tuple[int, int]]] = [[] for _ in inputs]
        var_cells: dict[str, list[tuple[int, int]]] = {}
        for call in captured.linear.src:
            program = call.src[0]
            if program.op is not Ops.PROGRAM or not isinstance(call.src[1].device, str):
                raise UnsupportedGraph(f"cannot flatten a {program.op} call")
            info = program.arg
            args = get_call_arg_uops(call)
            resolved = resolve_params(call, input_uops)
            addresses = [_address(resolved[i]) for i in info.globals]
            if len(addresses) + len(info.vars) > MAX_ARGS:
                raise UnsupportedGraph(f"{info.function_name} takes more than {MAX_ARGS} arguments")
            runtime = get_runtime(DEVICE, program)
            groups.append((len(rows), int(info.global_size[0])))
            names.append(str(info.function_name))
            for tid in range(int(info.global_size[0])):
                row = len(rows)
                for col, i in enumerate(info.globals, start=1):
                    if args[i].op is Ops.PARAM:
                        input_cells[args[i].arg.slot].append((row, col))
                    elif any(u.op is Ops.PARAM for u in args[i].toposort()):
                        raise UnsupportedGraph("a kernel reads a view of a JIT input")
                values: list[int] = []
                for j, var in enumerate(info.vars):
                    values.append(tid if var.expr == "core_id" else 0)
                    if var.expr != "core_id":
                        var_cells.setdefault(var.expr, []).append((row, 1 + len(addresses) + j))
                rows.append([int(runtime.addr), *addresses, *values])
        table = np.zeros((len(rows), 1 + MAX_ARGS), np.uint64)
        for i, r in enumerate(rows):
            table[i, : len(r)] = r
        output_cells = _cells_of(table, groups, output)
        return cls(
            table,
            np.array(groups, np.int64).reshape(-1, 2),
            [_cell_array(c) for c in input_cells] + [output_cells],
            {name: _cell_array(c) for name, c in var_cells.items()},
            names,
        )


def _cells_of(table: np.ndarray, groups: list[tuple[int, int]], t: Tensor) -> np.ndarray:
    """Where the buffer of `t` appears among the kernels' pointer arguments.

    Refuses a graph where a kernel gets a pointer into the middle of it (a view),
    which patching the base address would miss.
    """
    start = buffer_address(t)
    end = start + int(np.prod([int(n) for n in t.shape])) * t.dtype.itemsize
    args = table[:, 1:]
    exact = np.argwhere(args == start)
    inside = np.argwhere((args > start) & (args < end))
    if len(inside):
        raise UnsupportedGraph("a kernel reads a view of the step's output")
    exact[:, 1] += 1  # table columns: the kernel address comes first
    return exact.astype(np.intp)


def _cell_array(cells: list[tuple[int, int]]) -> np.ndarray:
    return np.array(cells, np.intp).reshape(-1, 2)


class KernelProgram:
    """Kernel templates placed one after another, run as one dispatcher call.

    Each placement fixes some input slots (weights, the step's own buffers) and
    names the others with a key (a request's KV cache), whose addresses come
    with every call, as do the variables' values.
    """

    def __init__(self) -> None:
        self._tables: list[np.ndarray] = []
        self._groups: list[np.ndarray] = []
        self._rows = 0
        self._dynamic: dict[Hashable, list[np.ndarray]] = {}
        self._variables: dict[str, list[np.ndarray]] = {}
        self.names: list[str] = []
        self._table = np.zeros((0, 1 + MAX_ARGS), np.uint64)
        self._group_array = np.zeros((0, 2), np.int64)
        self._run = _dispatcher()

    def place(
        self, template: KernelTemplate, fixed: dict[int, int], dynamic: dict[int, Hashable]
    ) -> None:
        """Append a copy of `template` with input slots `fixed` (slot -> address) filled.

        Slot -1 is the output buffer. `dynamic` maps the remaining slots to keys.
        """
        table = template.table.copy()
        for slot, address in fixed.items():
            cells = template.cells[slot]
            table[cells[:, 0], cells[:, 1]] = address
        for slot, key in dynamic.items():
            cells = template.cells[slot].copy()
            cells[:, 0] += self._rows
            self._dynamic.setdefault(key, []).append(cells)
        for name, cells in template.variables.items():
            moved = cells.copy()
            moved[:, 0] += self._rows
            self._variables.setdefault(name, []).append(moved)
        groups = template.groups.copy()
        groups[:, 0] += self._rows
        self._tables.append(table)
        self._groups.append(groups)
        self._rows += len(table)
        self.names += template.names
        self._table = np.concatenate(self._tables)
        self._group_array = np.concatenate(self._groups)

    def __call__(
        self, addresses: dict[Hashable, int], variables: dict[str, int], threads: int = 1
    ) -> None:
        """Run every kernel; `addresses` gives each dynamic key's buffer address.

        threads: how many threads (this one included) share each kernel's slices.
        """
        table = self._table
        for key, cell_list in self._dynamic.items():
            address = addresses[key]
            for cells in cell_list:
                table[cells[:, 0], cells[:, 1]] = address
        for name, cell_list in self._variables.items():
            value = variables[name] & 0xFFFFFFFFFFFFFFFF
            for cells in cell_list:
                table[cells[:, 0], cells[:, 1]] = value
        groups = self._group_array
        self._run(table.ctypes.data, groups.ctypes.data, len(groups), threads)
