"""`Step`: one fixed-shape computation, traced by `TinyJit` and then replayed fast."""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

import numpy as np
from tinygrad import Tensor, TinyJit, UOp, dtypes

from exoquic.engines.tinygrad.device import DEVICE
from exoquic.engines.tinygrad.runner import KernelList, UnsupportedGraph, buffer_address

log = logging.getLogger(__name__)

# fn(x, tensors, *variables) -> output; x is the step's input buffer.
StepFn = Callable[..., Tensor]


class Step:
    """Runs `fn(x, tensors, *variables)` for float32 inputs of one fixed shape.

    The first two calls go through `TinyJit` (an eager run, then the capture);
    later calls replay the captured kernels through `KernelList`, passing the
    same-shaped `tensors` (KV caches) by address and the bound `variables`
    (positions) by value. Inputs are copied into a buffer the step owns.
    """

    def __init__(self, fn: StepFn, input_shape: tuple[int, ...], threads: int = 1) -> None:
        self._threads = threads
        self._jit = TinyJit(lambda x, tensors, *vs: fn(x, tensors, *vs).realize())
        self._x = Tensor.empty(*input_shape, dtype=dtypes.float32, device=DEVICE).realize()
        self._x_address = buffer_address(self._x)
        self._kernels: KernelList | None = None
        self._out: np.ndarray | None = None  # view of the captured output buffer

    @property
    def kernel_count(self) -> int:
        return self._kernels.kernel_count if self._kernels else 0

    def __call__(
        self, x: np.ndarray, tensors: list[Tensor], variables: list[UOp], addresses: list[int]
    ) -> np.ndarray:
        """Run on `x`; `addresses` are those of `tensors` (cached by the caller)."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        assert x.shape == self._x.shape, f"{x.shape} != {self._x.shape}"
        ctypes.memmove(self._x_address, x.ctypes.data, x.nbytes)
        if self._kernels is not None and self._out is not None:
            values = {}
            for v in variables:
                var, value = v.unbind()
                values[var.expr] = int(value)
            self._kernels([self._x_address, *addresses], values, self._threads)
            return self._out.copy()
        out = self._jit(self._x, tensors, *variables)
        if self._jit.captured is not None:
            self._flatten(tensors, out)
        return out.numpy()

    def _flatten(self, tensors: list[Tensor], out: Tensor) -> None:
        captured = self._jit.captured
        assert captured is not None
        try:
            self._kernels = KernelList.from_captured(captured, [self._x, *tensors])
        except UnsupportedGraph as e:
            log.warning("tinygrad step stays on TinyJit replay (slower): %s", e)
            return
        shape = tuple(int(n) for n in out.shape)
        raw = (ctypes.c_float * int(np.prod(shape))).from_address(buffer_address(out))
        self._out = np.ctypeslib.as_array(raw).reshape(shape)
