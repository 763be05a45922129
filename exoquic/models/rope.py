"""Rotary position embedding frequencies, shared by every engine.

Both engines take their rotation angles from `inverse_frequencies`, so an MLX
node and a tinygrad node in one ring cannot disagree on them.
"""

from __future__ import annotations

import numpy as np

from exoquic.models.config import (
    LinearRopeScaling,
    Llama3RopeScaling,
    LongRopeScaling,
    RopeFrequencyFactors,
    RopeScaling,
)


def inverse_frequencies(
    head_dim: int, theta: float, scaling: RopeScaling | None = None, context: int | None = None
) -> np.ndarray:
    """The `head_dim / 2` rotary inverse frequencies, float64.

    Position p rotates dimension pair i (i and i + head_dim/2 in the Hugging
    Face half-split layout) by `p * inverse_frequencies(...)[i]` radians.
    Without scaling this is `theta ** (-2i / head_dim)`. `context` is the
    number of positions the engine serves; longrope scaling needs it to pick
    its factor set (see `exoquic.models.longrope`).
    """
    if head_dim <= 0 or head_dim % 2:
        raise ValueError(f"head_dim must be positive and even, got {head_dim}")
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling is None:
        return inv_freq
    if isinstance(scaling, LinearRopeScaling):
        return inv_freq / scaling.factor
    if isinstance(scaling, LongRopeScaling):
        if context is None:
            raise ValueError("longrope scaling picks its factors by the context served")
        scaling = RopeFrequencyFactors(scaling.factors_for(context))
    if isinstance(scaling, RopeFrequencyFactors):
        factors = np.asarray(scaling.factors, dtype=np.float64)
        if factors.shape != inv_freq.shape:
            raise ValueError(f"{factors.size} frequency factors for head_dim {head_dim}")
        return inv_freq / factors
    return _llama3(inv_freq, scaling)


def attention_factor(scaling: RopeScaling | None) -> float:
    """What RoPE multiplies cos and sin by, so q and k both (longrope's factor; else 1)."""
    return scaling.attention_factor if isinstance(scaling, LongRopeScaling) else 1.0


def _llama3(inv_freq: np.ndarray, s: Llama3RopeScaling) -> np.ndarray:
    """Llama 3's scaling (transformers' `_compute_llama3_parameters`).

    Short wavelengths (local patterns) stay as trained; wavelengths longer than
    the original context are stretched by `factor`; between the two, a blend
    that is continuous at both edges.
    """
    context = s.original_max_position_embeddings
    wavelength = 2 * np.pi / inv_freq
    high_freq_wavelength = context / s.high_freq_factor  # shorter than this: kept
    low_freq_wavelength = context / s.low_freq_factor  # longer than this: divided by factor
    # 1 at the high-frequency edge, 0 at the low-frequency edge.
    smooth = (context / wavelength - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor)
    blended = (1 - smooth) * inv_freq / s.factor + smooth * inv_freq
    return np.where(
        wavelength < high_freq_wavelength,
        inv_freq,
        np.where(wavelength > low_freq_wavelength, inv_freq / s.factor, blended),
    )
