"""Log-probabilities of tokens under the model's raw distribution (pure numpy).

The last shard computes them from the logits it samples from, before
temperature, top-k or top-p, as OpenAI and vLLM report by default: the number
says what the model thinks of a token, whatever the request's sampling did
with it. Only the chosen token's value and the `top` best alternatives leave
the node, never a whole vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat's top_logprobs


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability and the `top` most likely tokens at its position
    (best first, ties by lower id), as (token id, log-probability) pairs."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log(softmax(logits)) in float64, stable for any finite logits (the
    log-sum-exp is taken after subtracting the maximum)."""
    values = np.asarray(logits, dtype=np.float64).reshape(-1)
    shifted = values - values.max()
    return shifted - np.log(np.exp(shifted).sum())


def token_logprob(logits: np.ndarray, token_id: int, top: int = 0) -> TokenLogprob:
    """`token_id`'s log-probability under `logits` and the `top` best tokens."""
    if not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ValueError(f"top must be in 0..{MAX_TOP_LOGPROBS}, not {top}")
    logprobs = log_softmax(logits)
    if not 0 <= token_id < logprobs.size:
        raise ValueError(f"token {token_id} is outside the vocabulary of {logprobs.size}")
    best: tuple[tuple[int, float], ...] = ()
    if top:
        # stable sort of the negated values: best first, ties by lower id
        ids = np.argsort(-logprobs, kind="stable")[:top]
        best = tuple((int(i), float(logprobs[i])) for i in ids)
    return TokenLogprob(token_id, float(logprobs[token_id]), best)
