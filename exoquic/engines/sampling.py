"""Choosing the next token from the last shard's logits.

Pure numpy, shared by every engine so that MLX and tinygrad nodes sample
identically: given the same logits, parameters and seed, the same token comes out.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens.

    temperature 0 means greedy (argmax). top_p and top_k restrict the candidates
    before drawing; top_k 0 means no limit. A request with a seed draws from its
    own generator, so the same seed gives the same output.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError("temperature must be between 0 and 2")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Sampler:
    """Draws the tokens of one request.

    The draw for step n depends only on (seed, n), not on earlier draws, so any
    node can take over sampling mid-request (after a failure, or when the ring
    changes) and continue exactly as the old one would have. A request without
    a seed gets a random one here.
    """

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)

    def sample(self, logits: np.ndarray, step: int) -> int:
        """The token for generation step `step` (0 for the first generated token)."""
        if self.params.greedy:
            return int(np.argmax(logits))
        probs = candidate_probabilities(logits, self.params)
        token_ids = np.flatnonzero(probs)
        rng = np.random.default_rng([self.seed, step])
        return int(rng.choice(token_ids, p=probs[token_ids]))


def candidate_probabilities(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """The distribution drawn from: softmax(logits / T), cut by top_k and top_p, renormalised."""
    scaled = np.asarray(logits, dtype=np.float64) / params.temperature
    order = np.argsort(-scaled, kind="stable")
    if params.top_k:
        order = order[: params.top_k]
    ranked = np.exp(scaled[order] - scaled[order[0]])
    ranked /= ranked.sum()
    # Keep the smallest prefix whose mass reaches top_p (always at least one token).
    keep = int(np.searchsorted(np.cumsum(ranked), params.top_p) + 1)
    ranked = ranked[:keep] / ranked[:keep].sum()
    probs = np.zeros_like(scaled)
    probs[order[:keep]] = ranked
    return probs
