"""Quantizing float matrices on load: gguf.quants' kinds and exoquic's own Q4_K encoder."""

from __future__ import annotations

import numpy as np
import pytest

from exoquic.models.quantize import quantize
from exoquic.models.weights import QuantKind


def weights(rows: int = 32, cols: int = 512, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Rows with different ranges and offsets, like real matrices' outlier rows.
    x = rng.standard_normal((rows, cols)) * rng.uniform(0.005, 0.05, (rows, 1))
    return (x + rng.uniform(-0.01, 0.01, (rows, 1))).astype(np.float32)


def relative_rms_error(kind: QuantKind, x: np.ndarray) -> float:
    y = quantize(x, kind).dequantize()
    return float(np.sqrt(((y - x) ** 2).mean()) / np.sqrt((x**2).mean()))


@pytest.mark.parametrize(("kind", "bound"), [("q8_0", 0.01), ("q4_0", 0.12), ("q4_1", 0.1)])
def test_gguf_kinds_round_trip(kind: QuantKind, bound: float) -> None:
    assert relative_rms_error(kind, weights()) < bound


def test_q4_k_is_as_accurate_as_q4_1() -> None:
    x = weights()
    # Same 4-bit codes per 32 values; the 6-bit scales cost a little.
    assert relative_rms_error("q4_k", x) < 1.1 * relative_rms_error("q4_1", x)
    t = quantize(x, "q4_k")
    assert t.blocks.shape == (32, 512 // 256 * 144)


def test_q4_k_error_per_value_is_within_half_a_sub_block_step() -> None:
    x = weights(rows=4)
    y = quantize(x, "q4_k").dequantize()
    sub = x.reshape(4, -1, 32)
    span = sub.max(axis=2) - np.minimum(sub.min(axis=2), 0)
    # Half a step of 1/15 of the span, plus the 6-bit rounding of scale and minimum.
    bound = span / 15 * 0.5 + span / 15 * 15 / 63
    assert (np.abs(y - x).reshape(4, -1, 32) <= bound[:, :, None]).all()


@pytest.mark.parametrize("value", [0.0, -0.25, 0.5])
def test_q4_k_constant_rows(value: float) -> None:
    x = np.full((2, 256), value, np.float32)
    np.testing.assert_allclose(quantize(x, "q4_k").dequantize(), x, atol=abs(value) * 0.01)


def test_bad_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot quantize to q6_k"):
        quantize(weights(), "q6_k")
    with pytest.raises(ValueError, match="whole blocks of 256"):
        quantize(weights(cols=96), "q4_k")
