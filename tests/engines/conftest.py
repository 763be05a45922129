"""Fixtures for the engine tests."""

from __future__ import annotations

import pytest
from engines.tiny_model import TINY, WeightsFor, weights_factory


@pytest.fixture(scope="module", params=[False, True], ids=["f32", "ggml"])
def tiny_weights(request: pytest.FixtureRequest) -> WeightsFor:
    """`ShardWeights` of any shard of one tiny model, dense float32 or GGML-quantized."""
    return weights_factory(TINY, quantized=request.param)
