"""Penalties, min_p, logit_bias and the per-request sampler (engines/sampling.py)."""

import numpy as np
import pytest

from exoquic.engines.sampling import (
    RequestSampler,
    Sampler,
    SamplingParams,
    adjust_logits,
    candidate_probabilities,
)

LOGITS = np.array([1.0, 3.0, 2.0, -0.5, 2.9], dtype=np.float32)


def test_logit_bias_adds_to_the_named_tokens() -> None:
    params = SamplingParams(logit_bias=((0, 5.0), (1, -100.0)))
    adjusted = adjust_logits(LOGITS, params, (), ())
    np.testing.assert_allclose(adjusted, [6.0, -97.0, 2.0, -0.5, 2.9])
    assert Sampler(params).sample(LOGITS, 0) == 0


def test_frequency_and_presence_penalties_count_generated_tokens_only() -> None:
    params = SamplingParams(frequency_penalty=0.5, presence_penalty=0.25)
    adjusted = adjust_logits(LOGITS, params, prompt=(2, 2, 2), generated=(1, 1, 4))
    # token 1: twice (2 * 0.5 + 0.25); token 4: once (0.5 + 0.25); prompt token 2: untouched
    np.testing.assert_allclose(adjusted, [1.0, 1.75, 2.0, -0.5, 2.15])


def test_negative_penalties_favour_repeats() -> None:
    params = SamplingParams(presence_penalty=-2.0)
    assert Sampler(params).sample(LOGITS, 0, generated=(2,)) == 2


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    params = SamplingParams(repetition_penalty=2.0)
    adjusted = adjust_logits(LOGITS, params, prompt=(3, 3), generated=(1,))
    # once per token whatever its count, prompt and output alike
    np.testing.assert_allclose(adjusted, [1.0, 1.5, 2.0, -1.0, 2.9])
    assert Sampler(params).sample(LOGITS, 0, prompt=(3,), generated=(1,)) == 4


def test_ids_past_the_logits_are_ignored() -> None:
    params = SamplingParams(logit_bias=((99, 1.0),), repetition_penalty=1.5, presence_penalty=1)
    adjusted = adjust_logits(LOGITS, params, prompt=(50,), generated=(70,))
    np.testing.assert_allclose(adjusted, LOGITS)


def test_min_p_drops_tokens_below_its_share_of_the_likeliest() -> None:
    params = SamplingParams(temperature=1.0, min_p=0.3)
    probs = candidate_probabilities(LOGITS, params)
    # e^(2 - 3) = 0.37 passes 0.3; e^(1 - 3) = 0.14 does not
    assert set(np.flatnonzero(probs)) == {1, 2, 4}
    assert probs.sum() == pytest.approx(1.0)
    assert set(np.flatnonzero(candidate_probabilities(LOGITS, SamplingParams(temperature=1.0)))) \
        == {0, 1, 2, 3, 4}  # fmt: skip


def test_min_p_one_keeps_only_the_best() -> None:
    sampler = Sampler(SamplingParams(temperature=2.0, min_p=1.0, seed=1))
    assert {sampler.sample(LOGITS, step) for step in range(30)} == {1}


def test_a_mask_limits_the_draw_to_allowed_tokens() -> None:
    allowed = np.array([True, False, False, True, False])
    greedy = Sampler(SamplingParams())
    assert greedy.sample(LOGITS, 0, allowed=allowed) == 0
    hot = Sampler(SamplingParams(temperature=2.0, seed=5))
    assert {hot.sample(LOGITS, step, allowed=allowed) for step in range(50)} == {0, 3}


def test_a_mask_that_allows_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="no token"):
        Sampler(SamplingParams()).sample(LOGITS, 0, allowed=np.zeros(5, dtype=bool))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_p": 1.5},
        {"presence_penalty": 2.5},
        {"frequency_penalty": -3},
        {"repetition_penalty": 0},
        {"repetition_penalty": 11},
        {"logit_bias": ((1, 101.0),)},
        {"logit_bias": ((-1, 1.0),)},
    ],
)
def test_invalid_knobs_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_uses_history_only_with_penalties_or_a_grammar() -> None:
    assert not SamplingParams(temperature=1.0, min_p=0.1, logit_bias=((1, 1.0),)).uses_history
    assert SamplingParams(frequency_penalty=0.1).uses_history
    assert SamplingParams(repetition_penalty=1.1).uses_history
    assert SamplingParams(grammar="{}").uses_history


def _feed(sampler: RequestSampler, prompt: list[int], steps: int) -> list[int]:
    """Run a request through `sampler`: the prompt in two chunks, then each drawn
    token fed back as the next step's input; the draws."""
    sampler.observe(0, 0, prompt[:2])
    sampler.observe(0, 2, prompt[2:])
    drawn = []
    for step, logits in enumerate(outputs_logits(steps)):
        if step:
            sampler.observe(step, len(prompt) + step - 1, [drawn[-1]])
        drawn.append(sampler.sample(logits, step))
    return drawn


def outputs_logits(steps: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=50).astype(np.float32) for _ in range(steps)]


def test_request_sampler_is_reproducible_and_penalties_change_output() -> None:
    params = SamplingParams(temperature=0.8, seed=11, frequency_penalty=2.0)
    prompt = [1, 2, 3, 4]
    first = _feed(RequestSampler(params), prompt, 30)
    again = _feed(RequestSampler(params), prompt, 30)
    plain = _feed(RequestSampler(SamplingParams(temperature=0.8, seed=11)), prompt, 30)
    assert first == again
    assert first != plain


def test_a_replayed_step_draws_what_the_first_try_drew() -> None:
    """What a failover replay relies on: the state is a function of the tokens fed."""
    params = SamplingParams(temperature=1.0, seed=3, presence_penalty=1.5, repetition_penalty=1.3)
    logits = outputs_logits(12)
    first = RequestSampler(params)
    first.observe(0, 0, [7, 8, 9])
    drawn = [first.sample(logits[0], 0)]
    for step in range(1, 12):
        first.observe(step, 2 + step, [drawn[-1]])
        drawn.append(first.sample(logits[step], step))
    replay = RequestSampler(params)
    replay.observe(0, 0, [7, 8, 9])
    for step in range(1, 8):  # the history as decode steps, all at once
        replay.observe(step, 2 + step, [drawn[step - 1]])
    assert replay.sample(logits[7], 7) == drawn[7]


def test_request_sampler_refuses_a_gap_in_the_steps() -> None:
    sampler = RequestSampler(SamplingParams(presence_penalty=1.0))
    sampler.observe(0, 0, [1])
    with pytest.raises(ValueError, match="step 3"):
        sampler.observe(3, 3, [5])
