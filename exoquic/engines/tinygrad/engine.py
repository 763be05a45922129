"""`TinygradEngine`: runs one llama shard with tinygrad on the CPU.

Each request's KV cache is allocated on its first forward (virtual memory for
`max_context` positions; pages are only backed once written) and freed by
`release`. Prefill runs in chunks of `PREFILL_BUCKETS` rows; decode steps of
several requests given to `forward_batch` run as one batch. Steps are traced
on first use (a few seconds on two cores; `warm_up` does it ahead).
"""

from __future__ import annotations

import ctypes
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from tinygrad import Tensor, UOp

from exoquic.engines.base import Engine, EngineError, ForwardItem
from exoquic.engines.tinygrad.compile_pool import stop_compile_pool
from exoquic.engines.tinygrad.cpu_kernels import GEMM_ROWS
from exoquic.engines.tinygrad.device import TINYGRAD_LOCK
from exoquic.engines.tinygrad.matrices import HostArrays
from exoquic.engines.tinygrad.model import ShardModel
from exoquic.engines.tinygrad.runner import buffer_address, worker_threads
from exoquic.engines.tinygrad.step import LayerStack, Step
from exoquic.models.shard import Shard
from exoquic.models.weights import ShardWeights

# Prefill runs in chunks of one of these lengths (the last chunk padded), so
# only a handful of graph shapes are ever compiled. No longer chunks: 512 rows ran
# at half the rate per token of four 128-row chunks (1B Q4_K_M, one thread: 17-20
# against 36-44 tok/s, the same results), as a GEMM's activations then outgrow
# the CPU caches, and each weight panel streams them all from memory.
PREFILL_BUCKETS = (32, 128)
# Released requests' caches kept for new requests: allocating one (zeroed memory and
# a tinygrad tensor per layer) costs ~50 ms on two cores, paid by every new request.
SPARE_CACHES = 8
# Decode batches run at one of these sizes: padded up to the next one, split above
# the last. Each size is traced on first use (~1 s); padding a batch of 5 to 8 would
# cost 60% more compute on every step, so small sizes are all there. All stay below
# GEMM_ROWS: there the products switch from per-row integer dot products to a float32
# GEMM that rounds differently, and a request's tokens would depend on how many others
# shared its steps (and a replayed request, see `Ring`, would not repeat itself).
DECODE_BATCHES = (1, 2, 3, 4, 5, 6, 7, 8, 12, GEMM_ROWS - 1)


@dataclass
class _Request:
    memory: HostArrays  # behind the caches
    caches: list[Tensor]  # per layer
    addresses: list[int]  # of the caches' memory, passed to replayed steps
    arrays: list[np.ndarray]  # the same memory seen from numpy, `(2, KV, C, hd)` per layer
    length: int = 0


class TinygradEngine(Engine):
    """An `Engine` on tinygrad's CPU device (kernels compiled with clang)."""

    name: ClassVar[str] = "tinygrad"

    def __init__(
        self, max_context: int = 2048, fast: bool = True, threads: int | None = None
    ) -> None:
        """fast: attention and quantized products run as C kernels, the products on
        int16-quantized activations (~1e-4 of the logit scale from float32); False keeps
        every kernel tinygrad-generated with float32 activations (slow; a reference).
        threads: CPU threads per step (default: the usable CPUs minus one, 1 to 4)."""
        super().__init__(max_context)
        self.fast = fast
        self.threads = threads or worker_threads()
        self._model: ShardModel | None = None
        self._requests: dict[str, _Request] = {}
        self._steps: dict[tuple[str, int], LayerStack] = {}
        self._heads: dict[tuple[str, int], Step] = {}
        self._scratch_requests: list[_Request] = []
        self._spare: list[_Request] = []  # caches of released requests, for new ones

    @property
    def shard(self) -> Shard | None:
        return self._model.shard if self._model else None

    def load(self, weights: ShardWeights) -> None:
        self.unload()
        # Slack past max_context lets the last, padded prefill chunk always fit; the
        # attention kernel stores keys in blocks of 8 positions.
        capacity = -(-(self.max_context + PREFILL_BUCKETS[0] - 1) // 8) * 8
        with TINYGRAD_LOCK:
            self._model = ShardModel(weights, capacity, self.fast, self.max_context)

    def unload(self) -> None:
        self._model = None
        self._requests.clear()
        self._steps.clear()
        self._heads.clear()
        self._scratch_requests = []
        self._spare = []

    def forward(self, request_id: str, inputs: np.ndarray) -> np.ndarray:
        return self.forward_batch([ForwardItem(request_id, inputs)])[0]

    def forward_batch(self, items: list[ForwardItem]) -> list[np.ndarray]:
        """Forward several requests; single-position steps of distinct requests run as one batch.

        Every item is validated (inputs, context room) before any cache changes,
        so a bad item leaves every request as it was.
        """
        model = self._require_model()
        hidden = [self._hidden_inputs(model, item.inputs) for item in items]
        self._check_room(items, [h.shape[0] for h in hidden])
        counts = Counter(item.request_id for item in items)
        batch = [
            i
            for i, h in enumerate(hidden)
            if h.shape[0] == 1 and counts[items[i].request_id] == 1 and not items[i].all_logits
        ]
        results: dict[int, np.ndarray] = {}
        if batch:
            outs = self._decode(
                model, [items[i].request_id for i in batch], [hidden[i] for i in batch]
            )
            results.update(zip(batch, outs, strict=True))
        for i, item in enumerate(items):
            if i not in results:
                results[i] = self._prefill(model, item.request_id, hidden[i], item.all_logits)
        return [results[i] for i in range(len(items))]

    def warm_up(self, prompt_lengths: tuple[int, ...] = PREFILL_BUCKETS[:2]) -> None:
        """Trace and compile the steps a request will need (the prefill chunk for each
        prompt length, a decode step and the head), so the first real request does not
        wait for them.

        Steps are otherwise made on first use. Tracing runs one layer of each kind
        through tinygrad; the rest of the model is not run.
        """
        model = self._require_model()
        request_id = f"warm-up-{id(self)}"
        request = self._request(model, request_id)
        for length in prompt_lengths:
            bucket = _pick_bucket(min(length, self.max_context - 1), model.capacity)
            start = _prefill_start(model, bucket, 0)
            self._stack("prefill", bucket, 1).trace([request.caches], [start])
        self._stack("decode", 1, 1).trace([request.caches], _decode_positions(model, [request]))
        if model.shard.is_last:
            self._head(model, np.zeros((1, model.config.hidden_size), np.float32))
        self.release(request_id)
        # Compiling is done: a serving node keeps no compiler processes.
        stop_compile_pool()

    def cache_length(self, request_id: str) -> int:
        request = self._requests.get(request_id)
        return request.length if request else 0

    def release(self, request_id: str) -> None:
        request = self._requests.pop(request_id, None)
        if request is not None and len(self._spare) < SPARE_CACHES:
            self._spare.append(request)

    def active_requests(self) -> int:
        return len(self._requests)

    def copy_prefix(self, source: str, target: str, length: int) -> None:
        model = self._require_model()
        self._check_copy(source, target, length)
        copied = self._requests[source]
        request = self._request(model, target)
        for into, of in zip(request.arrays, copied.arrays, strict=True):
            into[:, :, :length] = of[:, :, :length]
        request.length = length

    def cache_bytes_per_position(self) -> int:
        if self._model is None:
            return 0
        c = self._model.config
        return len(self._model.layers) * 2 * c.num_kv_heads * c.head_dim * 4  # float32

    def cache_bytes(self) -> int:
        """Bytes held by every request's KV cache."""
        return sum(r.memory.nbytes for r in self._requests.values())

    def flattened_steps(self) -> int:
        """How many compiled steps replay through the direct kernel dispatcher (diagnostics)."""
        steps: list[LayerStack | Step] = [*self._steps.values(), *self._heads.values()]
        return sum(1 for step in steps if step.program is not None)

    def _require_model(self) -> ShardModel:
        if self._model is None:
            raise EngineError("no shard loaded")
        return self._model

    def _hidden_inputs(self, model: ShardModel, inputs: np.ndarray) -> np.ndarray:
        """Validate one request's inputs and turn them into float32 hidden states `(T, D)`."""
        x = np.asarray(inputs)
        if model.shard.is_first:
            if x.ndim != 1 or x.shape[0] == 0 or not np.issubdtype(x.dtype, np.integer):
                raise EngineError(f"expected int token ids of shape (T,), got {x.dtype} {x.shape}")
            vocab = model.config.vocab_size
            if x.min() < 0 or x.max() >= vocab:
                raise EngineError(f"token id out of range 0..{vocab - 1}")
            return model.embed(x.astype(np.int64))
        hidden_size = model.config.hidden_size
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != hidden_size:
            raise EngineError(f"expected hidden states (T, {hidden_size}), got {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise EngineError(f"expected float hidden states, got {x.dtype}")
        return np.ascontiguousarray(x, dtype=np.float32)

    def _request(self, model: ShardModel, request_id: str) -> _Request:
        request = self._requests.get(request_id)
        if request is None:
            if self._spare:
                # A released request's cache: what it holds is never read, since
                # attention only reads the positions this request writes first.
                request = self._spare.pop()
                request.length = 0
            else:
                request = _new_request(model)
            self._requests[request_id] = request
        return request

    def _prefill(
        self, model: ShardModel, request_id: str, hidden: np.ndarray, all_logits: bool = False
    ) -> np.ndarray:
        request = self._request(model, request_id)
        self.positions_run += len(hidden)
        outputs = []
        done = 0
        while done < len(hidden):
            bucket = _pick_bucket(len(hidden) - done, model.capacity - request.length)
            n = min(bucket, len(hidden) - done)
            chunk = np.zeros((bucket, hidden.shape[1]), np.float32)
            chunk[:n] = hidden[done : done + n]
            start = _prefill_start(model, bucket, request.length)
            stack = self._stack("prefill", bucket, 1)
            outputs.append(stack(chunk, [request.caches], [start], [request.addresses])[:n])
            request.length += n
            done += n
        out = np.concatenate(outputs)
        if not model.shard.is_last:
            return out
        return self._all_logits(model, out) if all_logits else self._head(model, out[-1:])[0]

    def _all_logits(self, model: ShardModel, hidden: np.ndarray) -> np.ndarray:
        """The logits of every row `(T, vocab)`, the head run on blocks of a traced
        decode batch size (the last one padded), not traced anew for each T."""
        block = DECODE_BATCHES[-1]
        blocks = []
        for start in range(0, len(hidden), block):
            rows = hidden[start : start + block]
            padded = np.zeros((block, hidden.shape[1]), np.float32)
            padded[: len(rows)] = rows
            blocks.append(self._head(model, padded)[: len(rows)])
        return np.concatenate(blocks)

    def _decode(
        self, model: ShardModel, request_ids: list[str], hidden: list[np.ndarray]
    ) -> list[np.ndarray]:
        """One position for each request, in batches of up to `DECODE_BATCHES[-1]`."""
        top = DECODE_BATCHES[-1]
        outs: list[np.ndarray] = []
        for i in range(0, len(request_ids), top):
            outs += self._decode_batch(model, request_ids[i : i + top], hidden[i : i + top])
        return outs

    def _decode_batch(
        self, model: ShardModel, request_ids: list[str], hidden: list[np.ndarray]
    ) -> list[np.ndarray]:
        requests = [self._request(model, rid) for rid in request_ids]
        self.positions_run += len(requests)
        # Pad to a batch size that is traced anyway: each padded row belongs to a
        # scratch request that always sits at position 0 (its cache takes the
        # garbage). One per row: a traced step refuses the same buffer twice.
        size = next(b for b in DECODE_BATCHES if b >= len(requests))
        padding = size - len(requests)
        batch = requests + self._scratch(model, padding)
        rows = [*hidden, np.zeros((padding, model.config.hidden_size), np.float32)]
        positions = _decode_positions(model, batch)
        stack = self._stack("decode", size, size)
        out = stack(
            np.concatenate(rows),
            [r.caches for r in batch],
            positions,
            [r.addresses for r in batch],
        )
        for r in requests:
            r.length += 1
        if model.shard.is_last:
            return list(self._head(model, out)[: len(requests)])
        return [out[b : b + 1] for b in range(len(requests))]

    def _scratch(self, model: ShardModel, count: int) -> list[_Request]:
        """`count` requests no caller sees, whose caches padded decode rows write into."""
        while len(self._scratch_requests) < count:
            self._scratch_requests.append(_new_request(model))
        return self._scratch_requests[:count]

    def _head(self, model: ShardModel, hidden: np.ndarray) -> np.ndarray:
        key = ("head", len(hidden))
        if key not in self._heads:
            shape = (len(hidden), model.config.hidden_size)
            self._heads[key] = Step(model.head, shape, self.threads)
        return self._heads[key](hidden)

    def _stack(self, kind: str, rows: int, requests: int) -> LayerStack:
        """The compiled layers for `kind` over `rows` input rows, made on first use."""
        key = (kind, rows)
        if key not in self._steps:
            self._steps[key] = LayerStack(self._require_model(), rows, requests, self.threads)
        return self._steps[key]


def _prefill_start(model: ShardModel, bucket: int, length: int) -> UOp:
    """The bound position of a prefill chunk's first row (a variable of its traced step)."""
    return UOp.variable("start", 0, model.capacity - bucket).bind(length)


def _decode_positions(model: ShardModel, batch: list[_Request]) -> list[UOp]:
    """The bound positions of a decode step's rows, one request each."""
    return [
        UOp.variable(f"pos{b}", 0, model.capacity - 1).bind(r.length) for b, r in enumerate(batch)
    ]


def _new_request(model: ShardModel) -> _Request:
    """A request with fresh (zeroed) KV caches for every layer of `model`."""
    memory = HostArrays()
    with TINYGRAD_LOCK:
        caches = model.new_cache(memory)
        addresses = [buffer_address(c) for c in caches]
    arrays = [_float_array(address, c.shape) for address, c in zip(addresses, caches, strict=True)]
    return _Request(memory, caches, addresses, arrays)


def _float_array(address: int, shape: tuple[Any, ...]) -> np.ndarray:
    """The float32 memory at `address` as a numpy array (no copy): a cache's memory,
    which `copy_prefix` fills directly (the CPU device's buffers are host memory)."""
    pointer = ctypes.cast(address, ctypes.POINTER(ctypes.c_float))
    return np.ctypeslib.as_array(pointer, shape=tuple(int(n) for n in shape))


def _pick_bucket(remaining: int, room: int) -> int:
    """The prefill length for the next chunk, among the buckets that fit the cache's
    `room`: the smallest holding the `remaining` positions, unless padding would take
    over a quarter of it (a 40-position rest runs as 32 + 32, not as 128); then the largest
    below the rest. Rows compute the same whatever the chunking, so this only saves work."""
    fitting = [b for b in PREFILL_BUCKETS if b <= room]
    holding = next((b for b in fitting if b >= remaining), None)
    below = [b for b in fitting if b < remaining]
    if holding is not None and (holding - remaining <= holding // 4 or not below):
        return holding
    return below[-1] if below else fitting[-1]
