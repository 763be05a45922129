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
        token_ids, probs = candidates(logits, self.params)
        rng = np.random.default_rng([self.seed, step])
        index = int(np.searchsorted(np.cumsum(probs), rng.random(), side="right"))
        return int(token_ids[min(index, len(token_ids) - 1)])


# top_p usually keeps a few dozen tokens: rank this many first, the whole vocabulary
# only when they do not reach top_p (sorting 49152 logits costs ~3 ms a token).
_NUCLEUS_POOL = 256


def candidates(logits: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """The tokens drawn from and their probabilities (summing to 1): softmax(logits / T),
    cut to the top_k best and then to the smallest most-likely prefix whose mass reaches
    top_p (always at least one token), renormalised. Ranked tokens come best first, ties
    by lower id; without a cut, in id order."""
    scaled = np.asarray(logits, dtype=np.float64).reshape(-1) / params.temperature
    size = scaled.size
    pool = params.top_k if 0 < params.top_k < size else size
    top = float(scaled.max())
    if params.top_p >= 1.0:
        ids = np.arange(size) if pool == size else _best(scaled, pool)
        weights = np.exp((scaled if pool == size else scaled[ids]) - top)
        return ids, weights / weights.sum()
    # The mass is measured against the whole pool, whatever part of it is ranked.
    pool_ids = None if pool == size else _best(scaled, pool)
    pooled = scaled if pool_ids is None else scaled[pool_ids]
    total = float(np.exp(pooled - top).sum())
    ranked = min(pool, _NUCLEUS_POOL)
    while True:
        ids = _best(scaled, ranked) if pool_ids is None else pool_ids[:ranked]
        weights = np.exp(scaled[ids] - top)
        cumulative = np.cumsum(weights / total)
        if cumulative[-1] >= params.top_p or ranked == pool:
            break
        ranked = pool
    keep = min(int(np.searchsorted(cumulative, params.top_p)) + 1, ranked)
    return ids[:keep], weights[:keep] / weights[:keep].sum()


def _best(scaled: np.ndarray, count: int) -> np.ndarray:
    """The ids of the `count` largest values, largest first, ties by lower id."""
    if count < scaled.size:
        # Everything above the count-th largest value, then its ties by lower id
        # (argpartition alone would pick among ties arbitrarily).
        kth = np.partition(scaled, scaled.size - count)[scaled.size - count]
        above = np.flatnonzero(scaled > kth)
        ties = np.flatnonzero(scaled == kth)[: count - len(above)]
        chosen = np.concatenate([above, ties])
    else:
        chosen = np.arange(scaled.size)
    return chosen[np.lexsort((chosen, -scaled[chosen]))]


def candidate_probabilities(logits: np.ndarray, params: SamplingParams) -> np.ndarray:
    """`candidates` as one probability per vocabulary entry (zero outside the cut)."""
    token_ids, probs = candidates(logits, params)
    full = np.zeros(np.asarray(logits).size)
    full[token_ids] = probs
    return full
