"""The C kernels (through tinygrad) against numpy, and the engine registry/availability."""

from __future__ import annotations

import subprocess
import sys

import gguf
import numpy as np
import pytest
from tinygrad import Tensor

from exoquic.engines.base import EngineError
from exoquic.engines.registry import create_engine, engine_names
from exoquic.engines.tinygrad import custom, tinygrad_available
from exoquic.engines.tinygrad.cpu_kernels import GEMM_ROWS
from exoquic.engines.tinygrad.custom import quantize_rows, quantized_matmul
from exoquic.engines.tinygrad.device import DEVICE
from exoquic.engines.tinygrad.matrices import BlockMatrix, HostArrays, Q4Matrix, to_matrix
from exoquic.models.quant import GGML_TYPES
from exoquic.models.weights import QuantizedTensor, QuantKind

HOST = HostArrays()  # the memory behind the test matrices (tensors do not own it)


def quantized(kind: QuantKind, rows: int, cols: int, seed: int) -> QuantizedTensor:
    dense = np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)
    return QuantizedTensor(kind, gguf.quants.quantize(dense, GGML_TYPES[kind]), (rows, cols))


def product(x: np.ndarray, w: Q4Matrix | BlockMatrix) -> np.ndarray:
    return quantized_matmul(*quantize_rows(Tensor(x, device=DEVICE)), w).numpy()


@pytest.mark.parametrize("kind", ["q4_0", "q4_1", "q8_0"])
def test_quantized_matmul_matches_dequantized_weights(kind: QuantKind) -> None:
    t = quantized(kind, 96, 160, seed=1)
    w = to_matrix(t, HOST)
    assert isinstance(w, Q4Matrix | BlockMatrix)
    x = np.random.default_rng(2).standard_normal((5, 160)).astype(np.float32)
    x[0, 3] = 300.0  # an outlier: blocks are scaled on their own
    expected = x.astype(np.float64) @ t.dequantize().T.astype(np.float64)
    np.testing.assert_allclose(product(x, w), expected, atol=2e-4 * np.abs(expected).max())


def test_each_row_is_computed_the_same_way_in_any_batch() -> None:
    # Prefill (many rows) and decode (one row per request) must agree bit for bit.
    w = to_matrix(quantized("q4_1", 64, 96, seed=3), HOST)
    assert isinstance(w, Q4Matrix)
    x = np.random.default_rng(4).standard_normal((9, 96)).astype(np.float32)
    together = product(x, w)
    for rows in (1, 3, 5):
        np.testing.assert_array_equal(product(x[:rows], w), together[:rows])
    np.testing.assert_array_equal(product(x[4:5], w), together[4:5])


def test_portable_c_matches_the_avx2_code(monkeypatch: pytest.MonkeyPatch) -> None:
    # CPUs without AVX2 (arm64...) run the plain C branch of the row kernels.
    x = np.random.default_rng(7).standard_normal((3, 96)).astype(np.float32)
    for kind in ("q4_1", "q8_0"):
        w = to_matrix(quantized(kind, 40, 96, seed=8), HOST)
        assert isinstance(w, Q4Matrix | BlockMatrix)
        fast = product(x, w)
        monkeypatch.setattr(custom, "PORTABLE_C", True)
        portable = product(x, w)
        monkeypatch.setattr(custom, "PORTABLE_C", False)
        np.testing.assert_allclose(portable, fast, rtol=0, atol=1e-5 * np.abs(fast).max())


def test_many_rows_use_a_gemm_that_agrees_with_the_row_kernel() -> None:
    # A prefill chunk (>= GEMM_ROWS rows) multiplies the same dequantized activations in
    # float32 instead of integer dot products: equal up to float32 rounding.
    for kind in ("q4_1", "q8_0"):
        w = to_matrix(quantized(kind, 48, 96, seed=5), HOST)
        assert isinstance(w, Q4Matrix | BlockMatrix)
        x = np.random.default_rng(6).standard_normal((GEMM_ROWS + 5, 96)).astype(np.float32)
        many = product(x, w)
        rows = np.concatenate([product(x[i : i + 1], w) for i in range(len(x))])
        np.testing.assert_allclose(many, rows, rtol=0, atol=1e-5 * np.abs(rows).max())


def test_tinygrad_is_available_here() -> None:
    assert tinygrad_available() is None


def test_registry_creates_engines_lazily() -> None:
    assert set(engine_names()) >= {"tinygrad", "mlx"}
    engine = create_engine("tinygrad", max_context=128)
    assert engine.name == "tinygrad" and engine.max_context == 128 and engine.shard is None
    with pytest.raises(EngineError, match="unknown engine"):
        create_engine("cuda", max_context=128)
    code = (
        "import sys, exoquic.engines.registry, exoquic.engines.tinygrad;"
        " print('tinygrad' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
