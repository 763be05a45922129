"""The block-format llama of `engines.block_model` run by the tinygrad engine (fast
and portable paths) against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from engines.block_model import PROMPT, weights
from engines.reference import reference_forward

from exoquic.engines.tinygrad.engine import TinygradEngine


# The portable path compiles ~40 tinygrad-generated kernels (minutes on 2 cores).
@pytest.mark.parametrize(
    "fast", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["fast", "portable"]
)
def test_block_quantized_model_matches_the_reference(fast: bool) -> None:
    w = weights()
    engine = TinygradEngine(max_context=128, fast=fast)
    engine.load(w)
    engine.forward("r", PROMPT[:-2])
    engine.forward("r", PROMPT[-2:-1])
    logits = engine.forward("r", PROMPT[-1:])
    expected = reference_forward(w, PROMPT)[-1]
    # int16 activations on the fast path: ~1e-4 of the logit scale (see engine_factories).
    atol = (1e-3 if fast else 1e-4) * float(np.abs(expected).max())
    np.testing.assert_allclose(logits, expected, atol=atol, rtol=0)
