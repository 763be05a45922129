"""Phi-3's "longrope" RoPE scaling (also called "su"), from config.json or GGUF.

The model carries two sets of per-frequency divisors: `short_factor` for
sequences within the context it was pre-trained on
(`original_max_position_embeddings`, 4096 for Phi-3.5-mini) and `long_factor`
beyond it, plus an attention factor that multiplies both cos and sin (so the
attention scores grow by its square).

Hugging Face switches sets when a sequence outgrows the original context;
llama.cpp picks one set by the context it serves. exoquic does the latter:
an engine serving at most `original_max_position_embeddings` positions uses the
short factors (identical to Hugging Face for every sequence it can hold), a
larger one the long factors. Keys already in a cache were rotated with the same
set, so a request never mixes the two.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class LongRopeScaling:
    """Two sets of `head_dim / 2` frequency divisors and the attention factor."""

    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]
    original_max_position_embeddings: int
    attention_factor: float

    def factors_for(self, context: int) -> tuple[float, ...]:
        """The divisors an engine serving `context` positions rotates with."""
        if context > self.original_max_position_embeddings:
            return self.long_factor
        return self.short_factor


def longrope_from_hf(raw: Mapping[str, Any], config: Mapping[str, Any]) -> LongRopeScaling:
    """The scaling of a `rope_scaling` entry of type longrope/su in `config` (config.json).

    Phi-3 keeps `original_max_position_embeddings` next to `max_position_embeddings`
    at the top level; their ratio sets the default attention factor (as in
    transformers' `_compute_longrope_parameters`). Raises KeyError for a missing
    factor list, ValueError for an invalid one.
    """
    original = config.get("original_max_position_embeddings")
    if original is None:
        original = raw.get("original_max_position_embeddings", config["max_position_embeddings"])
    original = _positive_int(original, "original_max_position_embeddings")
    attention = raw.get("attention_factor")
    if attention is None:
        attention = default_attention_factor(int(config["max_position_embeddings"]), original)
    return _checked(raw["short_factor"], raw["long_factor"], original, attention)


def longrope_from_gguf(
    metadata: Mapping[str, Any], arch: str, short: np.ndarray, long: np.ndarray
) -> LongRopeScaling:
    """The scaling of a GGUF file with llama.cpp's `rope_factors_short/long` tensors.

    llama.cpp's converter stores the original context as
    `{arch}.rope.scaling.original_context_length` and the attention factor
    as `{arch}.rope.scaling.attn_factor`.
    """
    original_key = f"{arch}.rope.scaling.original_context_length"
    if original_key not in metadata:
        raise ValueError(f"rope factor tensors without {original_key}")
    original = _positive_int(metadata[original_key], original_key)
    attention = metadata.get(f"{arch}.rope.scaling.attn_factor")
    if attention is None:
        attention = default_attention_factor(int(metadata[f"{arch}.context_length"]), original)
    return _checked(short, long, original, attention)


def default_attention_factor(max_positions: int, original: int) -> float:
    """sqrt(1 + ln(s) / ln(original)) for the stretch s = max / original (1 without one)."""
    stretch = max_positions / original
    if stretch <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(stretch) / math.log(original))


def _checked(
    short: Sequence[float] | np.ndarray,
    long: Sequence[float] | np.ndarray,
    original: int,
    attention: Any,
) -> LongRopeScaling:
    short_t, long_t = _factors(short, "short_factor"), _factors(long, "long_factor")
    if len(short_t) != len(long_t):
        raise ValueError(
            f"longrope short_factor has {len(short_t)} values, long_factor {len(long_t)}"
        )
    factor = float(attention)
    if not factor > 0:
        raise ValueError(f"longrope attention factor must be positive, got {attention!r}")
    return LongRopeScaling(short_t, long_t, original, factor)


def _factors(values: Sequence[float] | np.ndarray, what: str) -> tuple[float, ...]:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0 or not np.all(array > 0):
        raise ValueError(f"longrope {what} must be positive numbers, got {values!r}")
    return tuple(float(v) for v in array)


def _positive_int(value: Any, what: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return number
