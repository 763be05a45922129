"""The block-format llama of `engines.block_model` run by the tinygrad engine (fast
and portable paths) against the float64 reference."""

from __future__ import annotations

import numpy as np
import pytest
from engines.block_model import PROMPT, weights
from engines.reference import reference_forward

from exoquic.engines.tinygrad import custom
from exoquic.engines.tinygrad.cpu_kernels import GEMM_ROWS
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


def test_integer_prefill_gives_the_float_gemms_top_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    # A prompt long enough for prefill chunks (>= GEMM_ROWS rows): the integer GEMM
    # against the float32 one on the same int16 activations, and against float64.
    w = weights()
    prompt = np.resize(PROMPT, GEMM_ROWS * 2 + 3)
    logits = {}
    for integer in (True, False):
        monkeypatch.setattr(custom, "INT_GEMM", integer)
        engine = TinygradEngine(max_context=128, fast=True)
        engine.load(w)
        logits[integer] = engine.forward("r", prompt)
    expected = reference_forward(w, prompt)[-1]
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(logits[True], expected, atol=1e-3 * scale, rtol=0)
    # Rounding differences in one layer can tip an activation's int16 code in the next.
    np.testing.assert_allclose(logits[True], logits[False], atol=1e-3 * scale, rtol=0)
    top = np.argsort(logits[False])[-5:]
    assert list(np.argsort(logits[True])[-5:]) == list(top)
