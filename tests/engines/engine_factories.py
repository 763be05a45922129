"""How the engine tests make each engine on tiny shards, and how close its results must be.

- MLX runs the same float32 operations on the same data: only its kernel choice
  for different shapes (batch rows, prefill length) can change the rounding, and
  against the float64 numpy reference values reach ~16 with errors ~5e-6.
- tinygrad's default (fast) path feeds quantized weights int16-quantized
  activations, so against the float64 reference it is close (~1e-4 of the logit
  scale) but not float32-exact. Between its own code paths it must agree to
  rounding: prefill chunks of 16+ rows use a GEMM (integer for GGML blocks) where
  decode uses per-row dot products; their sums round differently (~1e-5 of the
  scale per product), and a layer's rounding can tip an int16 activation code in
  the next, so through the tiny model's layers they differ by up to ~1e-4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from engines.tiny_model import TINY, WeightsFor

from exoquic.engines.mlx.engine import MLXEngine
from exoquic.engines.tinygrad.engine import TinygradEngine
from exoquic.models.shard import Shard

PROMPT = np.array([5, 17, 3, 88, 42, 0, 61, 9, 33, 70, 2], dtype=np.int32)
ATOL = 1e-4
PATHS_ATOL = 2e-4  # tinygrad's code paths against each other, of the logits' scale
WHOLE = Shard.whole("tiny", TINY.num_layers)

AnyEngine = MLXEngine | TinygradEngine
E = TypeVar("E", MLXEngine, TinygradEngine)


@dataclass(frozen=True)
class EngineFactory(Generic[E]):
    """Makes one kind of engine on tiny shards, and knows how close its results must be."""

    kind: type[E]
    max_context: int
    scaled_atol: bool  # tolerances relative to the values' scale (tinygrad), else ATOL

    def engine_for(
        self, weights: WeightsFor, start: int, end: int, max_context: int | None = None
    ) -> E:
        engine = self.kind(max_context=max_context or self.max_context)
        engine.load(weights(Shard("tiny", start, end, TINY.num_layers)))
        return engine

    def whole(self, weights: WeightsFor, max_context: int | None = None) -> E:
        return self.engine_for(weights, 0, TINY.num_layers - 1, max_context)

    def assert_close(self, got: np.ndarray, want: np.ndarray) -> None:
        """Equal up to rounding, between two of the engine's own code paths."""
        atol = PATHS_ATOL * max(1.0, float(np.abs(want).max())) if self.scaled_atol else ATOL
        np.testing.assert_allclose(got, want, atol=atol, rtol=0)

    def assert_matches_reference(
        self, got: np.ndarray, reference: np.ndarray, weights: WeightsFor
    ) -> None:
        """Close to the float64 numpy reference (looser for tinygrad's int16 activations)."""
        quantized = not isinstance(
            weights(WHOLE).tensors["model.layers.0.mlp.up_proj.weight"], np.ndarray
        )
        atol = ATOL
        if self.scaled_atol and quantized:
            atol = 1e-3 * float(np.abs(reference).max())
        np.testing.assert_allclose(got, reference, atol=atol, rtol=0)


MLX = EngineFactory(MLXEngine, max_context=2048, scaled_atol=False)
TINYGRAD = EngineFactory(TinygradEngine, max_context=256, scaled_atol=True)
FACTORIES: dict[str, EngineFactory[MLXEngine] | EngineFactory[TinygradEngine]] = {
    "mlx": MLX,
    "tinygrad": TINYGRAD,
}


def run_chain(engines: list[AnyEngine], request_id: str, tokens: np.ndarray) -> np.ndarray:
    x: np.ndarray = tokens
    for engine in engines:
        x = engine.forward(request_id, x)
    return x
