"""Compiled steps: traced once by `TinyJit`, then replayed through `runner.KernelProgram`.

`LayerStack` traces one layer per distinct layer structure (all layers of a
llama shard usually share one) with the layer's weights as JIT inputs, and
replays that trace for every layer with the weight addresses swapped. Tracing
one layer instead of thirty keeps tinygrad's (Python) scheduling, and so the
cold start, short.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Hashable

import numpy as np
from tinygrad import Tensor, TinyJit, UOp
from tinygrad.engine.jit import _TinyJit  # what TinyJit() returns

from exoquic.engines.tinygrad.device import TINYGRAD_LOCK
from exoquic.engines.tinygrad.matrices import HostArrays
from exoquic.engines.tinygrad.model import LayerWeights, ShardModel
from exoquic.engines.tinygrad.runner import (
    KernelProgram,
    KernelTemplate,
    UnsupportedGraph,
    buffer_address,
)

log = logging.getLogger(__name__)


def _capturing_jit(fn: Callable[..., Tensor]) -> _TinyJit[Tensor]:
    """A TinyJit that captures on its first call (tinygrad's default first runs eagerly,
    which would schedule everything twice; our inputs are always realized)."""
    jit = TinyJit(fn)
    jit.cnt = 1
    return jit


def _variables(bound: list[UOp]) -> dict[str, int]:
    values = {}
    for v in bound:
        var, value = v.unbind()
        values[var.expr] = int(value)
    return values


class _Buffers:
    """Float32 host buffers the steps own, with numpy views to copy in and out."""

    def __init__(self) -> None:
        self._host = HostArrays()

    def new(self, shape: tuple[int, ...]) -> tuple[Tensor, np.ndarray]:
        with TINYGRAD_LOCK:
            t = self._host.zeros(shape)
        raw = (ctypes.c_float * int(np.prod(shape))).from_address(buffer_address(t))
        return t, np.ctypeslib.as_array(raw).reshape(shape)


class Step:
    """`fn(x)` for float32 inputs of one fixed shape (the head)."""

    def __init__(
        self, fn: Callable[[Tensor], Tensor], shape: tuple[int, ...], threads: int
    ) -> None:
        self._jit = _capturing_jit(lambda x: fn(x).realize())
        self._threads = threads
        self._buffers = _Buffers()
        self._x, self._x_view = self._buffers.new(shape)
        self._program: KernelProgram | None = None
        self._out: np.ndarray | None = None

    @property
    def program(self) -> KernelProgram | None:
        return self._program

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self._x_view[...] = x
        if self._program is not None and self._out is not None:
            self._program({}, {}, self._threads)
            return self._out.copy()
        with TINYGRAD_LOCK:
            out = self._jit(self._x)
            if self._jit.captured is not None:
                self._flatten(out)
            return out.numpy()

    def _flatten(self, out: Tensor) -> None:
        assert self._jit.captured is not None
        try:
            template = KernelTemplate.from_captured(self._jit.captured, [self._x], out)
        except UnsupportedGraph as e:
            log.warning("tinygrad step stays on TinyJit replay (slower): %s", e)
            return
        target, self._out = self._buffers.new(tuple(int(n) for n in out.shape))
        program = KernelProgram()
        program.place(template, {0: buffer_address(self._x), -1: buffer_address(target)}, {})
        self._program = program


class LayerStack:
    """The shard's layers over `rows` new rows of `requests` requests (see `ShardModel.layer`)."""

    def __init__(self, model: ShardModel, rows: int, requests: int, threads: int) -> None:
        self._model = model
        self._requests = requests
        self._threads = threads
        self._buffers = _Buffers()
        shape = (rows, model.config.hidden_size)
        self._x, self._x_view = self._buffers.new(shape)
        # Layers alternate between two output buffers, so none reads what it writes.
        self._outs = [self._buffers.new(shape) for _ in range(2)]
        self._jits: dict[object, _TinyJit[Tensor]] = {}
        self._program: KernelProgram | None = None
        self._traced = False

    @property
    def program(self) -> KernelProgram | None:
        return self._program

    def __call__(
        self,
        x: np.ndarray,
        caches: list[list[Tensor]],
        positions: list[UOp],
        addresses: list[list[int]],
    ) -> np.ndarray:
        """Run every layer: `caches[b][layer]` (at `addresses[b][layer]`) for request b."""
        self._x_view[...] = x
        self.trace(caches, positions)
        if self._program is None:
            return self._run_jits(caches, positions)
        keys: dict[Hashable, int] = {
            ("cache", layer, b): a for b, per in enumerate(addresses) for layer, a in enumerate(per)
        }
        self._program(keys, _variables(positions), self._threads)
        return self._outs[(len(self._model.layers) - 1) % 2][1].copy()

    def _jit(self, structure: object, template: LayerWeights) -> _TinyJit[Tensor]:
        if structure not in self._jits:
            model, count = self._model, len(template.tensors())

            def run(x: Tensor, tensors: list[Tensor], *positions: UOp) -> Tensor:
                w = template.rebuild(tensors[:count])
                return model.layer(x, w, tensors[count:], list(positions)).realize()

            self._jits[structure] = _capturing_jit(run)
        return self._jits[structure]

    def trace(self, caches: list[list[Tensor]], positions: list[UOp]) -> None:
        """Capture one layer of each structure through its JIT, then flatten them into
        the step's program (once; later calls do nothing).

        Only the capturing runs go through tinygrad (one thread), on whatever the
        input buffer holds; a call then runs every layer in the program (threaded). A
        captured layer writes its cache rows, which that call writes again, right.
        """
        if self._traced:
            return
        with TINYGRAD_LOCK:
            x = self._x
            captures: dict[object, list[Tensor]] = {}
            for i, w in enumerate(self._model.layers):
                structure = w.structure()
                if structure in captures:
                    continue
                inputs = w.tensors() + [c[i] for c in caches]
                captures[structure] = [x, *inputs]
                x = self._jit(structure, w)(x, inputs, *positions)
            self._traced = True
            try:
                self._program = self._flatten(captures)
            except UnsupportedGraph as e:
                log.warning("tinygrad layers stay on TinyJit replay (slower): %s", e)

    def _run_jits(self, caches: list[list[Tensor]], positions: list[UOp]) -> np.ndarray:
        """Every layer through its (captured) JIT: where flattening was not possible."""
        with TINYGRAD_LOCK:
            x = self._x
            for i, w in enumerate(self._model.layers):
                inputs = w.tensors() + [c[i] for c in caches]
                x = self._jit(w.structure(), w)(x, inputs, *positions)
            return x.numpy()

    def _flatten(self, captures: dict[object, list[Tensor]]) -> KernelProgram:
        templates = {}
        for structure, inputs in captures.items():
            captured = self._jits[structure].captured
            assert captured is not None
            templates[structure] = KernelTemplate.from_captured(captured, inputs, captured.ret)
        program = KernelProgram()
        previous = buffer_address(self._x)
        for i, w in enumerate(self._model.layers):
            weights = w.tensors()
            out = buffer_address(self._outs[i % 2][0])
            fixed = {0: previous, -1: out}
            fixed |= {1 + j: buffer_address(t) for j, t in enumerate(weights)}
            dynamic: dict[int, Hashable] = {
                1 + len(weights) + b: ("cache", i, b) for b in range(self._requests)
            }
            program.place(templates[w.structure()], fixed, dynamic)
            previous = out
        return program
