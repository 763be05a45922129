"""Q5_0, Q5_1, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS computed on in their GGML block bytes: the
C kernels and the portable tinygrad expressions against `gguf.quants` and a float64 reference."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from models.ggml_blocks import random_blocks
from tinygrad import Tensor

from exoquic.engines.tinygrad import custom
from exoquic.engines.tinygrad.cpu_kernels import GEMM_COLS, GEMM_ROWS, GEMM_VECTORS
from exoquic.engines.tinygrad.custom import dequantize_blocks, quantize_rows, quantized_matmul
from exoquic.engines.tinygrad.device import DEVICE
from exoquic.engines.tinygrad.ggml_kernels import INT_GEMM_COLS
from exoquic.engines.tinygrad.matrices import (
    BLOCK_KINDS,
    BlockMatrix,
    DenseMatrix,
    HostArrays,
    dequantized,
    matmul,
    to_matrix,
)
from exoquic.models.quant import GGML_TYPES
from exoquic.models.weights import QuantizedTensor, QuantKind

HOST = HostArrays()  # the memory behind the test matrices (tensors do not own it)
KINDS = sorted(BLOCK_KINDS)
# int16 activations (|q| <= 32767 per block of 32) against float64: products agree to
# this fraction of the largest output.
PRODUCT_TOLERANCE = 2e-4
GEMM_TILE_ROWS = 8 * GEMM_VECTORS


def block_matrix(
    kind: QuantKind, rows: int, cols: int, seed: int
) -> tuple[BlockMatrix, QuantizedTensor]:
    t = random_blocks(kind, rows, cols, seed)
    w = to_matrix(t, HOST)
    assert isinstance(w, BlockMatrix) and w.shape == (rows, cols)
    return w, t


def reference(t: QuantizedTensor) -> np.ndarray:
    return gguf.quants.dequantize(t.blocks, GGML_TYPES[t.kind]).reshape(t.shape)


def product(x: np.ndarray, w: BlockMatrix) -> np.ndarray:
    return quantized_matmul(*quantize_rows(Tensor(x, device=DEVICE)), w).numpy()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("portable", [False, True], ids=["avx2", "plain-c"])
def test_c_dequantization_equals_gguf(
    kind: QuantKind, portable: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The code the prefill GEMM dequantizes weights with, in both of its C branches.
    monkeypatch.setattr(custom, "PORTABLE_C", portable)
    w, t = block_matrix(kind, 8, 512, seed=1)
    np.testing.assert_array_equal(dequantize_blocks(w).numpy(), reference(t))


@pytest.mark.parametrize("kind", KINDS)
def test_portable_dequantization_equals_gguf(kind: QuantKind) -> None:
    w, t = block_matrix(kind, 8, 512, seed=2)
    np.testing.assert_array_equal(dequantized(w).numpy(), reference(t))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rows", [1, 5, GEMM_ROWS + 3])
def test_products_match_float64(kind: QuantKind, rows: int) -> None:
    # rows < GEMM_ROWS: integer dot products per row; from GEMM_ROWS: the float32 GEMM.
    w, t = block_matrix(kind, 40, 512, seed=3)
    x = np.random.default_rng(4).standard_normal((rows, 512)).astype(np.float32)
    x[0, 3] = 300.0  # an outlier: activation blocks are scaled on their own
    expected = x.astype(np.float64) @ reference(t).T.astype(np.float64)
    atol = PRODUCT_TOLERANCE * np.abs(expected).max()
    np.testing.assert_allclose(product(x, w), expected, rtol=0, atol=atol)
    # The portable path: float32 activations, tinygrad-generated kernels.
    portable = matmul(Tensor(x, device=DEVICE), w, fast=False).numpy()
    np.testing.assert_allclose(portable, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("kind", KINDS)
def test_portable_c_matches_the_avx2_code(kind: QuantKind, monkeypatch: pytest.MonkeyPatch) -> None:
    w, _ = block_matrix(kind, 24, 512, seed=5)
    x = np.random.default_rng(6).standard_normal((3, 512)).astype(np.float32)
    fast = product(x, w)
    monkeypatch.setattr(custom, "PORTABLE_C", True)
    portable = product(x, w)
    np.testing.assert_allclose(portable, fast, rtol=0, atol=1e-5 * np.abs(fast).max())


def test_each_row_is_computed_the_same_way_in_any_batch() -> None:
    w, _ = block_matrix("q4_k", 32, 512, seed=7)
    x = np.random.default_rng(8).standard_normal((9, 512)).astype(np.float32)
    together = product(x, w)
    for rows in (1, 3, 5):
        np.testing.assert_array_equal(product(x[:rows], w), together[:rows])
    np.testing.assert_array_equal(product(x[4:5], w), together[4:5])


@pytest.mark.parametrize("kind", ["q5_0", "q5_1", "q8_0", "iq4_nl"])
@pytest.mark.parametrize("rows", [1, GEMM_ROWS])
def test_rows_that_are_not_whole_super_blocks(kind: QuantKind, rows: int) -> None:
    # 160 values a row: the 32-value kinds go one block at a time instead of 8.
    w, t = block_matrix(kind, 24, 160, seed=9)
    np.testing.assert_array_equal(dequantize_blocks(w).numpy(), reference(t))
    x = np.random.default_rng(10).standard_normal((rows, 160)).astype(np.float32)
    expected = x.astype(np.float64) @ reference(t).T.astype(np.float64)
    atol = PRODUCT_TOLERANCE * np.abs(expected).max()
    np.testing.assert_allclose(product(x, w), expected, rtol=0, atol=atol)


def test_16_bit_rows_shorter_than_activation_blocks_are_widened() -> None:
    # Activations are quantized in blocks of 32 values: 48-value rows take the float path.
    t = random_blocks("f16", 8, 48, seed=11)
    w = to_matrix(t, HOST)
    assert isinstance(w, DenseMatrix)
    x = np.random.default_rng(12).standard_normal((2, 48)).astype(np.float32)
    got = matmul(Tensor(x, device=DEVICE), w, fast=True).numpy()
    np.testing.assert_allclose(got, x @ reference(t).T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["q4_k", "q6_k", "q8_0", "f16"])
def test_gemm_tiles_edges_and_residual(kind: QuantKind) -> None:
    # Prefill chunks: rows padded to whole register tiles (33 = one tile and a row),
    # columns that leave a part panel in each thread's slice (46), a residual added
    # in the store; against float64, and each row equal to the same row multiplied
    # in a smaller chunk (every output is one sum over k, whatever its tile).
    rows, cols = GEMM_TILE_ROWS + 1, GEMM_COLS * 7 + 4
    w, t = block_matrix(kind, cols, 512, seed=13)
    rng = np.random.default_rng(14)
    x = rng.standard_normal((rows, 512)).astype(np.float32)
    res = rng.standard_normal((rows, cols)).astype(np.float32)
    expected = x.astype(np.float64) @ reference(t).T.astype(np.float64) + res
    codes, sums = quantize_rows(Tensor(x, device=DEVICE))
    got = quantized_matmul(codes, sums, w, Tensor(res, device=DEVICE)).numpy()
    atol = PRODUCT_TOLERANCE * np.abs(expected).max()
    np.testing.assert_allclose(got, expected, rtol=0, atol=atol)
    fewer = rows - GEMM_TILE_ROWS + GEMM_ROWS  # a chunk with rows at other tile places
    np.testing.assert_array_equal(product(x[-fewer:], w), product(x, w)[-fewer:])


@pytest.mark.parametrize("kind", sorted(BLOCK_KINDS - {"f16", "bf16"}))
@pytest.mark.parametrize(
    ("portable", "vnni"),
    [(False, True), (False, False), (True, False)],
    ids=["vnni", "avx2", "plain-c"],
)
def test_integer_gemm_matches_float64_and_the_float_gemm(
    kind: QuantKind, portable: bool, vnni: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prefill chunks of block weights: int16 codes times int16 activations (VNNI's
    # `vpdpwssd`, AVX2's `pmaddwd`, plain C), panels of
    # INT_GEMM_COLS columns (here a part panel in each thread's slice) and tiles of 4
    # rows (here a row left over). Against float64 and the float32 GEMM on the same
    # activations (which differs only in rounding).
    monkeypatch.setattr(custom, "PORTABLE_C", portable)
    monkeypatch.setattr(custom, "INT_GEMM", True)
    monkeypatch.setattr(custom, "VNNI", vnni)  # "vnni" runs the AVX2 branch on CPUs without
    rows, cols = GEMM_ROWS + 5, INT_GEMM_COLS * 2 + 3
    w, t = block_matrix(kind, cols, 512, seed=17)
    x = np.random.default_rng(18).standard_normal((rows, 512)).astype(np.float32)
    x[1, 7] = -200.0  # an outlier: activation blocks are scaled on their own
    expected = x.astype(np.float64) @ reference(t).T.astype(np.float64)
    got = product(x, w)
    np.testing.assert_allclose(
        got, expected, rtol=0, atol=PRODUCT_TOLERANCE * np.abs(expected).max()
    )
    monkeypatch.setattr(custom, "INT_GEMM", False)
    np.testing.assert_allclose(got, product(x, w), rtol=0, atol=1e-5 * np.abs(expected).max())
