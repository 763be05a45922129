"""`MLXEngine`: runs one llama shard with MLX.

GGML block-quantized matrices (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K,
Q6_K, IQ4_NL, IQ4_XS) are repacked into MLX affine quantization with group size 32 (exactly,
except Q6_K: see `ggml_pack`), mlx-community checkpoints' affine matrices are
used as they are, and all are computed on with `mx.quantized_matmul`, so
the weights stay in 4, 5 or 8 bits; float16 / bfloat16 matrices stay 16-bit;
other tensors run in float32. Activations and the KV cache are float32, so hidden states match the
other engines closely enough to mix them in one ring.

MLX is imported by this module only: importing `exoquic.engines` must not
pull it in (the engine registry imports this module lazily).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, ClassVar

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from exoquic.engines.base import Engine, EngineError, ForwardItem
from exoquic.engines.mlx.cache import RequestCache
from exoquic.engines.mlx.ggml_pack import GROUP_SIZE, is_mappable, to_affine
from exoquic.engines.mlx.llama import ModelArgs, ShardModel, sanitize
from exoquic.models.affine import AffineTensor
from exoquic.models.shard import Shard
from exoquic.models.weights import QuantizedTensor, ShardWeights, WeightArray


class MLXEngine(Engine):
    """An `Engine` on MLX (Apple silicon GPU, or CPU through `mlx[cpu]`)."""

    name: ClassVar[str] = "mlx"

    def __init__(self, max_context: int = 2048) -> None:
        super().__init__(max_context)
        self._model: ShardModel | None = None
        self._shard: Shard | None = None
        self._caches: dict[str, RequestCache] = {}

    @property
    def shard(self) -> Shard | None:
        return self._shard

    def load(self, weights: ShardWeights) -> None:
        self.unload()
        args = ModelArgs.from_config(weights.config, weights.shard, self.max_context)
        model = ShardModel(args)
        tensors = sanitize(weights.tensors, weights.shard, model.tied)
        arrays, formats = _to_mlx(tensors)

        def predicate(path: str, module: nn.Module) -> bool | dict[str, Any]:
            if path not in formats:
                return False
            bits, group_size = formats[path]
            return {"group_size": group_size, "bits": bits}

        nn.quantize(model, class_predicate=predicate)
        model.load_weights(list(arrays.items()), strict=True)
        mx.eval(model.parameters())
        self._model, self._shard = model, weights.shard

    def unload(self) -> None:
        self._model, self._shard = None, None
        self._caches.clear()
        mx.clear_cache()

    def forward(self, request_id: str, inputs: np.ndarray) -> np.ndarray:
        return self.forward_batch([ForwardItem(request_id, inputs)])[0]

    def forward_batch(self, items: list[ForwardItem]) -> list[np.ndarray]:
        """Forward several requests; single-token steps of distinct requests run as one batch.

        Every item is checked (input shape, context room) before any cache
        changes, so a bad item leaves all requests as they were.
        """
        model = self._require_model()
        prepared = [self._prepare(item.inputs) for item in items]
        self._check_room(items, [x.shape[1] for x in prepared])
        counts = Counter(item.request_id for item in items)
        batch = [
            i
            for i, x in enumerate(prepared)
            if x.shape[1] == 1 and counts[items[i].request_id] == 1 and not items[i].all_logits
        ]
        results: list[np.ndarray | None] = [None] * len(items)
        if len(batch) > 1:
            outs = self._run(
                model, [items[i].request_id for i in batch], [prepared[i] for i in batch]
            )
            for i, out in zip(batch, outs, strict=True):
                results[i] = out
        for i, item in enumerate(items):
            if results[i] is None:
                results[i] = self._run(model, [item.request_id], [prepared[i]], item.all_logits)[0]
        return [r for r in results if r is not None]

    def cache_length(self, request_id: str) -> int:
        cache = self._caches.get(request_id)
        return cache.length if cache else 0

    def release(self, request_id: str) -> None:
        self._caches.pop(request_id, None)

    def active_requests(self) -> int:
        return len(self._caches)

    def copy_prefix(self, source: str, target: str, length: int) -> None:
        self._require_model()
        self._check_copy(source, target, length)
        self._caches[target] = self._caches[source].copy_prefix(length)

    def cache_bytes_per_position(self) -> int:
        if self._model is None:
            return 0
        args = self._model.args
        return args.num_layers * 2 * args.num_kv_heads * args.head_dim * 4  # float32 keys, values

    def cache_bytes(self) -> int:
        """Bytes held by every request's KV cache."""
        return sum(cache.nbytes for cache in self._caches.values())

    def _require_model(self) -> ShardModel:
        if self._model is None:
            raise EngineError("no shard loaded")
        return self._model

    def _prepare(self, inputs: np.ndarray) -> mx.array:
        """Validate one request's inputs and make them a batch of one: `(1, T[, D])`."""
        model = self._require_model()
        args = model.args
        x = np.asarray(inputs)
        if args.is_first:
            if x.ndim != 1 or x.shape[0] == 0 or not np.issubdtype(x.dtype, np.integer):
                raise EngineError(f"expected int token ids of shape (T,), got {x.dtype} {x.shape}")
            if x.min() < 0 or x.max() >= args.vocab_size:
                raise EngineError(f"token id out of range 0..{args.vocab_size - 1}")
            return mx.array(x.astype(np.int32)[None])
        if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] != args.hidden_size:
            raise EngineError(f"expected hidden states (T, {args.hidden_size}), got {x.shape}")
        if not np.issubdtype(x.dtype, np.floating):
            raise EngineError(f"expected float hidden states, got {x.dtype}")
        return mx.array(x.astype(np.float32)[None])

    def _run(
        self,
        model: ShardModel,
        request_ids: list[str],
        inputs: list[mx.array],
        all_logits: bool = False,
    ) -> list[np.ndarray]:
        """One forward pass over rows of equal length T (T is 1 whenever there are several rows)."""
        caches = [self._cache_for(model, rid).layers for rid in request_ids]
        x = inputs[0] if len(inputs) == 1 else mx.concatenate(inputs, axis=0)
        self.positions_run += sum(int(row.shape[1]) for row in inputs)
        out = model(x, caches, all_positions=all_logits)
        mx.eval(out)
        # np.array copies: the result must not alias MLX memory freed later.
        result = np.array(out, dtype=np.float32)
        return list(result)

    def _cache_for(self, model: ShardModel, request_id: str) -> RequestCache:
        cache = self._caches.get(request_id)
        if cache is None:
            cache = self._caches[request_id] = RequestCache(model.args.num_layers)
        return cache


_HALF_TYPES = {"f16": mx.float16, "bf16": mx.bfloat16}


def _to_mlx(
    tensors: dict[str, WeightArray],
) -> tuple[dict[str, mx.array], dict[str, tuple[int, int]]]:
    """MLX arrays for every tensor, plus (bits, group size) of each quantized module path.

    A mappable GGML matrix `x.weight` becomes `x.weight` (packed uint32),
    `x.scales` and `x.biases`, and so does an mlx-community matrix, as it is;
    anything else is float32.
    """
    arrays: dict[str, mx.array] = {}
    formats: dict[str, tuple[int, int]] = {}
    for name, tensor in tensors.items():
        path = name.removesuffix(".weight")
        if isinstance(tensor, AffineTensor):
            arrays[name] = mx.array(tensor.weight)
            arrays[f"{path}.scales"] = mx.array(tensor.scales)
            arrays[f"{path}.biases"] = mx.array(tensor.biases)
            formats[path] = (tensor.bits, tensor.group_size)
        elif isinstance(tensor, QuantizedTensor) and is_mappable(tensor):
            packed = to_affine(tensor)
            arrays[name] = mx.array(packed.weight)
            arrays[f"{path}.scales"] = mx.array(packed.scales)
            arrays[f"{path}.biases"] = mx.array(packed.biases)
            formats[path] = (packed.bits, GROUP_SIZE)
        elif isinstance(tensor, QuantizedTensor) and tensor.kind in _HALF_TYPES:
            # The GGUF bytes as they are: a 2-byte float per value, half the memory of float32.
            halves = np.ascontiguousarray(tensor.blocks).view(np.uint16).reshape(tensor.shape)
            arrays[name] = mx.array(halves).view(_HALF_TYPES[tensor.kind])
        elif isinstance(tensor, QuantizedTensor):
            arrays[name] = mx.array(tensor.dequantize().astype(np.float32))
        else:
            arrays[name] = mx.array(np.asarray(tensor, dtype=np.float32))
    return arrays, formats
