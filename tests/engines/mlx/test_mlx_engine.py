"""MLXEngine on tiny random models: what only MLX has (its cache growth, its lazy import).

What every engine must do is in tests/engines/test_engine_contract.py, and how
close MLX's results must be in tests/engines/engine_factories.py.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from engines.engine_factories import MLX, PROMPT
from engines.reference import reference_forward
from engines.tiny_model import TINY, WeightsFor

from exoquic.engines.mlx.engine import MLXEngine
from exoquic.models.shard import Shard


def test_chunked_prefill_equals_full_prefill(tiny_weights: WeightsFor) -> None:
    full = MLX.whole(tiny_weights).forward("r", PROMPT)
    engine = MLX.whole(tiny_weights)
    engine.forward("r", PROMPT[:4])
    MLX.assert_close(engine.forward("r", PROMPT[4:]), full)


def test_cache_grows_past_its_allocation_step(tiny_weights: WeightsFor) -> None:
    tokens = np.arange(300, dtype=np.int32) % TINY.vocab_size
    full = MLX.whole(tiny_weights).forward("r", tokens)
    engine = MLX.whole(tiny_weights)
    engine.forward("r", tokens[:250])  # the cache grows in steps of 256 positions
    engine.forward("r", tokens[250:299])
    logits = engine.forward("r", tokens[299:])
    MLX.assert_close(logits, full)


def test_engines_package_does_not_import_mlx() -> None:
    code = "import sys, exoquic.engines, exoquic.engines.mlx; print('mlx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("bounds", [(0, 3), (0, 1), (1, 2), (2, 3)], ids=lambda b: f"{b[0]}-{b[1]}")
def test_matches_numpy_reference(tiny_weights: WeightsFor, bounds: tuple[int, int]) -> None:
    shard = Shard("tiny", bounds[0], bounds[1], TINY.num_layers)
    weights = tiny_weights(shard)
    inputs: np.ndarray = PROMPT
    if not shard.is_first:
        inputs = reference_forward(tiny_weights(Shard("tiny", 0, shard.start_layer - 1, 4)), PROMPT)
    expected = reference_forward(weights, inputs)
    engine = MLXEngine()
    engine.load(weights)
    # Prefill all but the last position, then a decode step: both paths are checked.
    head = engine.forward("r", inputs[:-1])
    tail = engine.forward("r", inputs[-1:])
    if shard.is_last:
        MLX.assert_matches_reference(tail, expected[-1], tiny_weights)
    else:
        MLX.assert_matches_reference(np.concatenate([head, tail]), expected, tiny_weights)
