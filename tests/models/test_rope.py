"""`inverse_frequencies` against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from exoquic.models.config import LinearRopeScaling, Llama3RopeScaling, RopeFrequencyFactors
from exoquic.models.rope import inverse_frequencies

# Llama 3.1 / 3.2's published rope_scaling, and Llama 3.2 1B's head_dim and theta.
LLAMA3 = Llama3RopeScaling(
    factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
)


def test_plain_rope_is_theta_to_the_minus_2i_over_d() -> None:
    np.testing.assert_allclose(inverse_frequencies(4, 10000.0), [1.0, 0.01], rtol=1e-15)
    np.testing.assert_allclose(inverse_frequencies(8, 10000.0), [1.0, 0.1, 0.01, 0.001], rtol=1e-15)


def test_llama3_three_bands_by_hand() -> None:
    # theta 10000, head_dim 8: inverse frequencies 1, 0.1, 0.01, 0.001, wavelengths
    # 2 pi x (1, 10, 100, 1000). Original context 1000, low 1, high 4: wavelengths
    # under 1000 / 4 = 250 are kept, over 1000 / 1 = 1000 divided by 8, between blended.
    scaling = Llama3RopeScaling(
        factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=1000
    )
    got = inverse_frequencies(8, 10000.0, scaling)
    # 628.3 is in the blended band: smooth = (1000 / 628.3 - 1) / (4 - 1) = 0.19718...
    smooth = (1000 / (2 * math.pi * 100) - 1) / 3
    assert smooth == pytest.approx(0.1971831, abs=1e-7)
    blended = 0.01 * ((1 - smooth) / 8 + smooth)
    assert blended == pytest.approx(0.0029753525068, rel=1e-9)
    np.testing.assert_allclose(got, [1.0, 0.1, blended, 0.001 / 8], rtol=1e-13)


def test_llama3_on_llama_3_2_parameters() -> None:
    plain = inverse_frequencies(64, 500000.0)
    got = inverse_frequencies(64, 500000.0, LLAMA3)
    wavelength = 2 * np.pi / plain
    high, low = wavelength < 8192 / 4, wavelength > 8192 / 1
    middle = ~high & ~low
    assert high.sum() > 0 and low.sum() > 0 and middle.sum() > 0  # all three bands occur
    np.testing.assert_array_equal(got[high], plain[high])
    np.testing.assert_allclose(got[low], plain[low] / 32, rtol=1e-15)
    # Blended values lie strictly between the two, and the whole stays decreasing.
    assert np.all(got[middle] < plain[middle]) and np.all(got[middle] > plain[middle] / 32)
    assert np.all(np.diff(got) < 0)


def test_llama_cpp_frequency_factors_give_the_same_frequencies() -> None:
    # What llama.cpp's converter writes into a GGUF's rope_freqs.weight for Llama 3.
    factors = []
    for inv_freq in inverse_frequencies(64, 500000.0):
        wavelength = 2 * math.pi / inv_freq
        if wavelength < 8192 / 4:
            factors.append(1.0)
        elif wavelength > 8192 / 1:
            factors.append(32.0)
        else:
            smooth = (8192 / wavelength - 1) / (4 - 1)
            factors.append(1 / ((1 - smooth) / 32 + smooth))
    from_gguf = inverse_frequencies(64, 500000.0, RopeFrequencyFactors(tuple(factors)))
    np.testing.assert_allclose(from_gguf, inverse_frequencies(64, 500000.0, LLAMA3), rtol=1e-12)


def test_linear_divides_every_frequency() -> None:
    got = inverse_frequencies(8, 10000.0, LinearRopeScaling(4.0))
    np.testing.assert_allclose(got, [0.25, 0.025, 0.0025, 0.00025], rtol=1e-15)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="even"):
        inverse_frequencies(7, 10000.0)
    with pytest.raises(ValueError, match="3 frequency factors for head_dim 8"):
        inverse_frequencies(8, 10000.0, RopeFrequencyFactors((1.0, 2.0, 3.0)))
