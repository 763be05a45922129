"""Choosing the next token from the last shard's logits.

Pure numpy, shared by every engine so that MLX and tinygrad nodes sample
identically: given the same logits, parameters and seed, the same token comes out.
"""

from __future__ import annotations

import math
import secrets
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class SamplingParams:
    """How one request picks its tokens.

    temperature 0 means greedy (argmax). top_p and top_k restrict the candidates
    before drawing; top_k 0 means no limit; min_p drops the tokens less likely than
    min_p times the likeliest. A request with a seed draws from its own generator,
    so the same seed gives the same output.

    The rest change the logits before any of that (see `adjust_logits`):
    `logit_bias` (token id, bias) pairs, OpenAI's presence and frequency penalties
    on the generated tokens, Hugging Face's repetition penalty on the prompt's and
    the generated tokens, and `grammar`, an llguidance grammar (JSON text) the
    output must match (see engines/constraints.py). These make each draw depend
    on the tokens so far, which a `RequestSampler` keeps.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    grammar: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError("temperature must be between 0 and 2")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError("top_k must be >= 0")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError("min_p must be between 0 and 1")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be between -2 and 2")
        if not 0.0 < self.repetition_penalty <= MAX_REPETITION_PENALTY:
            raise ValueError(f"repetition_penalty must be in (0, {MAX_REPETITION_PENALTY:g}]")
        for token, bias in self.logit_bias:
            if token < 0 or not -100.0 <= bias <= 100.0:
                raise ValueError("logit_bias maps token ids >= 0 to biases in [-100, 100]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def uses_history(self) -> bool:
        """Whether a draw depends on the tokens so far (penalties, a grammar)."""
        return self.penalizes or self.grammar is not None

    @property
    def penalizes(self) -> bool:
        return (
            self.presence_penalty != 0.0
            or self.frequency_penalty != 0.0
            or self.repetition_penalty != 1.0
        )


MAX_REPETITION_PENALTY = 10.0


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

    def sample(
        self,
        logits: np.ndarray,
        step: int,
        prompt: Sequence[int] = (),
        generated: Sequence[int] = (),
        allowed: np.ndarray | None = None,
    ) -> int:
        """The token for generation step `step` (0 for the first generated token),
        after `prompt` and the `generated` tokens so far (which only penalties
        look at), among the `allowed` ones (a boolean mask; None: all)."""
        if self.params.logit_bias or self.params.penalizes or allowed is not None:
            logits = adjust_logits(logits, self.params, prompt, generated)
            if allowed is not None:
                allowed = _fit(allowed, logits.size)
                if not allowed.any():
                    raise ValueError("the grammar allows no token here")
                logits[~allowed] = -np.inf
        if self.params.greedy:
            return int(np.argmax(logits))
        token_ids, probs = candidates(logits, self.params, masked=allowed is not None)
        rng = np.random.default_rng([self.seed, step])
        index = int(np.searchsorted(np.cumsum(probs), rng.random(), side="right"))
        return int(token_ids[min(index, len(token_ids) - 1)])


# top_p usually keeps a few dozen tokens: rank this many first, the whole vocabulary
# only when they do not reach top_p (sorting 49152 logits costs ~3 ms a token).
_NUCLEUS_POOL = 256


def candidates(
    logits: np.ndarray, params: SamplingParams, masked: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The tokens drawn from and their probabilities (summing to 1): softmax(logits / T)
    without the tokens under min_p times the likeliest's probability (and, when
    `masked`, those at -inf), cut to the top_k best and then to the smallest most-likely
    prefix whose mass reaches top_p (always at least one token), renormalised.
    Ranked tokens come best first, ties by lower id; without a cut, in id order."""
    scaled = np.asarray(logits, dtype=np.float64).reshape(-1) / params.temperature
    if params.min_p > 0.0 or masked:
        return _among_kept(scaled, params)
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


def _among_kept(scaled: np.ndarray, params: SamplingParams) -> tuple[np.ndarray, np.ndarray]:
    """`candidates` of the tokens that pass min_p and are not masked out (-inf)."""
    floor = scaled.max() + (math.log(params.min_p) if params.min_p > 0.0 else -math.inf)
    kept = np.flatnonzero((scaled >= floor) & np.isfinite(scaled))
    plain = SamplingParams(temperature=1.0, top_p=params.top_p, top_k=params.top_k)
    ids, probs = candidates(scaled[kept], plain)
    return kept[ids], probs


def adjust_logits(
    logits: np.ndarray, params: SamplingParams, prompt: Sequence[int], generated: Sequence[int]
) -> np.ndarray:
    """The logits (a float64 copy) after `logit_bias` and the penalties.

    The repetition penalty (Hugging Face's and llama.cpp's semantics) divides the
    positive logits and multiplies the negative ones of every token present in
    the prompt or the output, once whatever its count. The presence and frequency
    penalties (OpenAI's) look at the generated tokens only: each token loses
    frequency_penalty per occurrence plus presence_penalty once.
    """
    adjusted = np.array(logits, dtype=np.float64).reshape(-1)
    size = adjusted.size
    for token, bias in params.logit_bias:
        if token < size:
            adjusted[token] += bias
    if params.repetition_penalty != 1.0:
        seen = np.unique(np.fromiter([*prompt, *generated], dtype=np.int64))
        seen = seen[seen < size]
        values = adjusted[seen]
        penalty = params.repetition_penalty
        adjusted[seen] = np.where(values > 0, values / penalty, values * penalty)
    if generated and (params.presence_penalty or params.frequency_penalty):
        counts = Counter(t for t in generated if t < size)
        ids = np.fromiter(counts.keys(), dtype=np.int64)
        times = np.fromiter(counts.values(), dtype=np.float64)
        adjusted[ids] -= params.frequency_penalty * times + params.presence_penalty
    return adjusted


def _fit(mask: np.ndarray, size: int) -> np.ndarray:
    """A token mask cut or padded (with False) to `size` entries: a model's
    logits may be padded past its tokenizer's vocabulary."""
    if mask.size >= size:
        return mask[:size]
    return np.concatenate([mask, np.zeros(size - mask.size, dtype=bool)])


class TokenConstraint(Protocol):
    """What must come next (a grammar): the tokens allowed after `generated`."""

    def allowed(self, generated: Sequence[int]) -> np.ndarray:
        """A boolean mask over the vocabulary; a pure function of `generated`."""


class RequestSampler:
    """The sampling of one request whose draws depend on its tokens so far.

    The sampling node keeps one per request while it runs and tells it each
    step's input tokens (`observe`): the prompt's, then each generated token as
    the input of the next step. What it draws at step n is a pure function of
    (params, seed, prompt, generated tokens 0..n-1), so a replay after a failover,
    which feeds the same tokens again, draws exactly as the first try did.
    """

    def __init__(self, params: SamplingParams, constraint: TokenConstraint | None = None) -> None:
        self.sampler = Sampler(params)
        self.constraint = constraint
        self._prompt: dict[int, int] = {}  # position -> token
        self.generated: list[int] = []  # by step

    def observe(self, step: int, start_position: int, tokens: Sequence[int]) -> None:
        """The input tokens of a step: step 0 feeds (a chunk of) the prompt from
        `start_position`; step n > 0 feeds generated token n - 1."""
        if step == 0:
            positions = range(start_position, start_position + len(tokens))
            self._prompt.update(zip(positions, tokens, strict=True))
        elif tokens:
            del self.generated[step - 1 :]  # a replayed step overrides what followed it
            if len(self.generated) != step - 1:
                raise ValueError(f"step {step} came before step {len(self.generated) + 1}")
            self.generated.append(int(tokens[0]))

    def sample(self, logits: np.ndarray, step: int) -> int:
        generated = self.generated[:step]
        allowed = None if self.constraint is None else self.constraint.allowed(generated)
        prompt = self._prompt.values() if self.sampler.params.repetition_penalty != 1.0 else ()
        return self.sampler.sample(logits, step, list(prompt), generated, allowed)
