"""The new families' features in batched decode steps: requests at different positions.

A decode batch runs its rows through the projections together (biases, q/k
norms, fused projections included) and each row at its own position (its own
sliding window and soft-capped scores for gemma2). Every request's logits must
be what it gets alone, on both engines (float32 weights: to rounding, 1e-5 of
the largest logit).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fixtures.tiny_hf import write_tiny_model

from exoquic.engines.base import ForwardItem
from exoquic.engines.mlx.engine import MLXEngine
from exoquic.engines.tinygrad.engine import TinygradEngine
from exoquic.models.hf_loader import load_hf_shard
from exoquic.models.shard import Shard

PROMPTS = [np.array([1, 17, 250, 3, 88]), np.array([42, 0, 61]), np.array([9, 299, 70, 2, 5, 6, 7])]
NEXT = [np.array([11]), np.array([12]), np.array([13])]


def make_engine(kind: str) -> MLXEngine | TinygradEngine:
    return MLXEngine(max_context=64) if kind == "mlx" else TinygradEngine(max_context=64)


@pytest.mark.parametrize("engine_kind", ["mlx", "tinygrad"])
# gemma2: its window (5) cuts at the decode positions 5 and 7, each row at its own.
@pytest.mark.parametrize("family", ["qwen2", "qwen3", "phi3", "gemma2"])
def test_batched_decode_equals_each_request_alone(
    tmp_path: Path, family: str, engine_kind: str
) -> None:
    model_dir = write_tiny_model(family, tmp_path / family)
    weights = load_hf_shard(model_dir, Shard.whole("tiny", 3))
    batched, alone = make_engine(engine_kind), make_engine(engine_kind)
    batched.load(weights)
    alone.load(weights)
    for i, prompt in enumerate(PROMPTS):
        batched.forward(f"r{i}", prompt)
    together = batched.forward_batch([ForwardItem(f"r{i}", t) for i, t in enumerate(NEXT)])
    for i, (prompt, token) in enumerate(zip(PROMPTS, NEXT, strict=True)):
        alone.forward(f"r{i}", prompt)
        want = alone.forward(f"r{i}", token)
        np.testing.assert_allclose(together[i], want, atol=1e-5 * np.abs(want).max(), rtol=0)
