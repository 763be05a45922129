import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from exoquic.engines.sampling import Sampler, SamplingParams, candidate_probabilities, candidates

LOGITS = np.array([1.0, 3.0, 2.0, 0.5, 2.9], dtype=np.float32)


def test_greedy_takes_argmax() -> None:
    assert Sampler(SamplingParams()).sample(LOGITS, 0) == 1


def test_top_k_one_is_greedy_at_any_temperature() -> None:
    sampler = Sampler(SamplingParams(temperature=1.5, top_k=1, seed=3))
    assert {sampler.sample(LOGITS, step) for step in range(50)} == {1}


def test_top_p_keeps_smallest_prefix_reaching_mass() -> None:
    probs = candidate_probabilities(LOGITS, SamplingParams(temperature=1.0, top_p=0.5))
    # tokens 1 and 4 are nearly tied at the top; together they pass 0.5.
    assert set(np.flatnonzero(probs)) == {1, 4}
    assert probs.sum() == pytest.approx(1.0)


def test_same_seed_same_draws_and_other_seed_differs() -> None:
    logits = np.linspace(0, 1, 1000, dtype=np.float32)
    params = SamplingParams(temperature=1.0, seed=42)
    first, second = Sampler(params), Sampler(params)
    draws_a = [first.sample(logits, step) for step in range(20)]
    draws_b = [second.sample(logits, step) for step in range(20)]
    other = Sampler(SamplingParams(temperature=1.0, seed=43))
    assert draws_a == draws_b
    assert len(set(draws_a)) > 1  # steps draw independently
    assert [other.sample(logits, step) for step in range(20)] != draws_a


def test_a_step_can_be_redrawn_anywhere_without_history() -> None:
    """What lets another node resume sampling after a failure."""
    logits = np.linspace(0, 1, 1000, dtype=np.float32)
    params = SamplingParams(temperature=1.0, seed=9)
    continuous = [Sampler(params).sample(logits, step) for step in range(10)]
    resumed = Sampler(params).sample(logits, 7)
    assert resumed == continuous[7]


def test_unseeded_requests_get_their_own_seed() -> None:
    params = SamplingParams(temperature=1.0)
    assert Sampler(params).seed != Sampler(params).seed


def test_temperature_sharpens_distribution() -> None:
    cold = candidate_probabilities(LOGITS, SamplingParams(temperature=0.2))
    hot = candidate_probabilities(LOGITS, SamplingParams(temperature=2.0))
    assert cold[1] > hot[1]


@pytest.mark.parametrize(
    "kwargs", [{"temperature": -1}, {"temperature": 3}, {"top_p": 0}, {"top_k": -1}]
)
def test_invalid_params_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


@given(
    logits=arrays(np.float32, st.integers(1, 64), elements=st.floats(-30, 30, width=32)),
    temperature=st.floats(0.05, 2.0),
    top_p=st.floats(0.01, 1.0),
    top_k=st.integers(0, 70),
)
def test_candidates_form_a_distribution(
    logits: np.ndarray, temperature: float, top_p: float, top_k: int
) -> None:
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k)
    probs = candidate_probabilities(logits, params)
    assert probs.sum() == pytest.approx(1.0)
    assert np.all(probs >= 0)
    assert probs[int(np.argmax(logits))] > 0  # the best token is always a candidate
    if top_k:
        assert np.count_nonzero(probs) <= top_k


def naive_candidates(logits: np.ndarray, params: SamplingParams) -> dict[int, float]:
    """The definition, spelled out: full ranking, then top_k, then top_p."""
    scaled = logits.astype(np.float64) / params.temperature
    order = sorted(range(len(scaled)), key=lambda i: (-scaled[i], i))
    if params.top_k:
        order = order[: params.top_k]
    weights = np.exp(scaled[order] - scaled[order[0]])
    weights /= weights.sum()
    keep = int(np.searchsorted(np.cumsum(weights), params.top_p)) + 1
    kept = weights[:keep] / weights[:keep].sum()
    return dict(zip(order[:keep], kept, strict=True))


@pytest.mark.parametrize("case", range(40))
def test_fast_candidates_match_the_definition_on_a_large_vocabulary(case: int) -> None:
    rng = np.random.default_rng(case)
    # Peaked like a model's logits (a few likely tokens), or flat (top_p needs them all).
    scale = 8.0 if case % 2 else 0.5
    logits = (rng.standard_normal(5000) * scale).astype(np.float32)
    params = SamplingParams(
        temperature=float(rng.uniform(0.3, 1.5)),
        top_p=float(rng.choice([0.5, 0.9, 0.99, 1.0])),
        top_k=int(rng.choice([0, 0, 20, 400])),
    )
    want = naive_candidates(logits, params)
    ids, probs = candidates(logits, params)
    assert probs.sum() == pytest.approx(1.0)
    got = {int(i): float(p) for i, p in zip(ids, probs, strict=True)}
    assert got.keys() == want.keys()
    assert [got[i] for i in want] == pytest.approx(list(want.values()), rel=1e-9)


def test_draws_follow_the_candidate_probabilities() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    sampler = Sampler(SamplingParams(temperature=1.0, seed=1))
    counts = np.bincount([sampler.sample(logits, step) for step in range(6000)], minlength=3)
    assert counts / counts.sum() == pytest.approx([0.5, 0.3, 0.2], abs=0.02)


def test_ties_at_the_cut_keep_the_lower_ids() -> None:
    logits = np.array([0.0, 0.0, 1.0, 1.0, 1.0], dtype=np.float32)
    ids, _ = candidates(logits, SamplingParams(temperature=1.0, top_k=2))
    assert ids.tolist() == [2, 3]  # like argmax: the first of equals
    assert Sampler(SamplingParams(temperature=1.0, top_k=1, seed=5)).sample(logits, 0) == 2
