"""Replays a captured `TinyJit` by calling its compiled kernels straight from C.

tinygrad 0.14 runs a captured JIT on the CPU device one kernel at a time from
Python (resolving buffers and arguments per kernel: ~50-100 us each), which
costs more than the kernels of a small model's decode step. `KernelList`
flattens the captured kernels into a table of function addresses and
arguments once; a tiny C loop (compiled with clang, which tinygrad's CPU
device needs anyway) then calls them in order. Per step, only the arguments
that change are patched: the addresses of the input buffers (a request's KV
cache) and the values of symbolic variables (positions).

This reads tinygrad internals (the captured linear, `ProgramInfo`, the CPU
program's load address), which is why `KernelList.from_captured` refuses anything
it does not recognise; callers then keep using the JIT itself.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
from tinygrad import Tensor
from tinygrad.device import Buffer
from tinygrad.engine.jit import CapturedJit
from tinygrad.engine.realize import get_call_arg_uops, get_runtime, resolve_params
from tinygrad.uop.ops import Ops, UOp

from exoquic.engines.tinygrad import COMPILER
from exoquic.engines.tinygrad.device import DEVICE

_DISPATCH_C = """
#include <stdint.h>
typedef void (*kernel_fn)({params});
/* Each row of `table` is a kernel address followed by its {n} arguments. */
void run_kernels(const uint64_t *table, int64_t count) {{
  for (int64_t i = 0; i < count; i++) {{
    const uint64_t *e = table + i * {row};
    ((kernel_fn)e[0])({args});
  }}
}}
"""


class UnsupportedGraph(Exception):
    """The captured JIT holds something other than plain CPU kernels."""


@functools.cache
def _dispatcher(max_args: int) -> ctypes._NamedFuncPointer:
    """A compiled `run_kernels` that passes `max_args` uint64 arguments to every kernel.

    Passing more integer arguments than a function declares is harmless in the
    C calling conventions of x86-64 and arm64 (the caller owns the stack).
    """
    source = _DISPATCH_C.format(
        params=", ".join(["uint64_t"] * max_args),
        n=max_args,
        row=max_args + 1,
        args=", ".join(f"e[{i + 1}]" for i in range(max_args)),
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
        subprocess.run([COMPILER, "-O2", "-shared", "-fPIC", "-o", partial, c_file], check=True)
        os.replace(partial, library)  # atomic: concurrent processes never load half a file
        os.unlink(c_file)
    fn = ctypes.CDLL(library).run_kernels
    fn.argtypes, fn.restype = [ctypes.c_void_p, ctypes.c_int64], None
    return fn


def buffer_address(t: Tensor) -> int:
    """The address of a realized tensor's memory on the CPU device."""
    return _address(t.uop)


def _address(u: UOp) -> int:
    buf = u.buffer
    if not isinstance(buf, Buffer):
        raise UnsupportedGraph("multi-device buffers are not supported")
    return int(buf.ensure_allocated().get_buf(DEVICE).va_addr)


@dataclass
class _Patch:
    rows: np.ndarray  # table rows
    cols: np.ndarray  # table columns


class KernelList:
    """The kernels of one captured JIT, callable with new inputs and variable values."""

    def __init__(
        self, table: np.ndarray, inputs: list[_Patch], variables: dict[str, _Patch]
    ) -> None:
        self._table = table
        self._inputs = inputs
        self._variables = variables
        self._run = _dispatcher(table.shape[1] - 1)

    @classmethod
    def from_captured(cls, captured: CapturedJit, inputs: list[Tensor]) -> KernelList:
        """Flatten a JIT's captured kernels; `inputs` are its input tensors in the JIT's order."""
        input_uops = tuple(t.uop.base for t in inputs)
        rows: list[list[int]] = []
        input_refs: list[list[tuple[int, int]]] = [[] for _ in inputs]
        var_refs: dict[str, list[tuple[int, int]]] = {}
        for call in captured.linear.src:
            program = call.src[0]
            if program.op is not Ops.PROGRAM or not isinstance(call.src[1].device, str):
                raise UnsupportedGraph(f"cannot flatten a {program.op} call")
            info = program.arg
            args = get_call_arg_uops(call)
            resolved = resolve_params(call, input_uops)
            addresses = [_address(resolved[i]) for i in info.globals]
            runtime = get_runtime(DEVICE, program)
            threads = int(info.global_size[0])
            for tid in range(threads):
                row_index = len(rows)
                for col, i in enumerate(info.globals, start=1):
                    if args[i].op is Ops.PARAM:
                        input_refs[args[i].arg.slot].append((row_index, col))
                    elif any(u.op is Ops.PARAM for u in args[i].toposort()):
                        raise UnsupportedGraph("a kernel reads a view of a JIT input")
                values: list[int] = []
                for j, var in enumerate(info.vars):
                    col = 1 + len(addresses) + j
                    if var.expr == "core_id":
                        values.append(tid)
                    else:
                        values.append(0)
                        var_refs.setdefault(var.expr, []).append((row_index, col))
                rows.append([int(runtime.addr), *addresses, *values])
        width = max(len(r) for r in rows)
        table = np.zeros((len(rows), width), np.uint64)
        for i, r in enumerate(rows):
            table[i, : len(r)] = r
        return cls(
            table,
            [_patch(refs) for refs in input_refs],
            {name: _patch(refs) for name, refs in var_refs.items()},
        )

    @property
    def kernel_count(self) -> int:
        return len(self._table)

    def __call__(self, input_addresses: list[int], variables: dict[str, int]) -> None:
        """Run every kernel with these input buffers (JIT order) and variable values."""
        table = self._table
        for patch, address in zip(self._inputs, input_addresses, strict=True):
            table[patch.rows, patch.cols] = address
        for name, patch in self._variables.items():
            table[patch.rows, patch.cols] = variables[name] & 0xFFFFFFFFFFFFFFFF
        self._run(table.ctypes.data, len(table))


def _patch(refs: list[tuple[int, int]]) -> _Patch:
    rows = np.array([r for r, _ in refs], np.intp)
    cols = np.array([c for _, c in refs], np.intp)
    return _Patch(rows, cols)


def bound_value(v: UOp) -> tuple[str, int]:
    """The name and value of a bound tinygrad variable."""
    var, value = v.unbind()
    return var.expr, int(value)
