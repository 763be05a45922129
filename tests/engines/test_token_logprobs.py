"""Log-probabilities from logits (pure numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from exoquic.engines.logprobs import log_softmax, token_logprob


def test_log_softmax_matches_the_definition() -> None:
    logits = np.array([1.0, 2.0, 3.0, -1.0], dtype=np.float32)
    expected = [math.log(math.exp(x) / sum(math.exp(y) for y in logits)) for x in logits]
    np.testing.assert_allclose(log_softmax(logits), expected, rtol=1e-12)


def test_log_softmax_is_stable_for_huge_logits() -> None:
    # exp(1e4) overflows float64: only a shifted log-sum-exp gives finite values
    logprobs = log_softmax(np.array([1e4, 1e4 - 1.0, -1e4]))
    assert np.isfinite(logprobs).all()
    assert logprobs[0] == pytest.approx(-math.log1p(math.exp(-1.0)))
    assert math.fsum(np.exp(logprobs)) == pytest.approx(1.0)


def test_the_chosen_token_and_the_best_alternatives() -> None:
    logits = np.array([0.5, 3.0, 3.0, -2.0, 1.0], dtype=np.float32)
    result = token_logprob(logits, 3, top=3)
    reference = log_softmax(logits)
    assert result.token_id == 3
    assert result.logprob == pytest.approx(reference[3])
    # best first, the tie between ids 1 and 2 by lower id
    assert [token for token, _ in result.top] == [1, 2, 4]
    assert [value for _, value in result.top] == pytest.approx(reference[[1, 2, 4]].tolist())


def test_no_alternatives_unless_asked() -> None:
    assert token_logprob(np.zeros(4), 0).top == ()


@pytest.mark.parametrize(("token", "top"), [(-1, 0), (4, 0), (0, 21), (0, -1)])
def test_bad_arguments_are_refused(token: int, top: int) -> None:
    with pytest.raises(ValueError):
        token_logprob(np.zeros(4), token, top)
