"""What every engine must do, on tiny random models: sharding, caches, batching, errors.

Each test runs against MLXEngine and TinygradEngine (the `engine_factory`
fixture); what only one engine has stays in its own folder, and how close each
engine's results must be is in engines/engine_factories.py.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
from engines.engine_factories import FACTORIES, PROMPT, WHOLE, EngineFactory, run_chain
from engines.reference import reference_forward
from engines.tiny_model import TINY, WeightsFor, weights_factory

from exoquic.engines.base import ContextOverflowError, EngineError, ForwardItem
from exoquic.models.shard import Shard


@pytest.fixture(params=list(FACTORIES))
def engine_factory(request: pytest.FixtureRequest) -> EngineFactory:
    """Each engine in turn."""
    return FACTORIES[request.param]


def test_whole_shard_returns_last_position_logits(
    engine_factory: EngineFactory, tiny_weights: WeightsFor
) -> None:
    logits = engine_factory.whole(tiny_weights).forward("r", PROMPT)
    assert logits.shape == (TINY.vocab_size,) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits)) and np.std(logits) > 0.1
    expected = reference_forward(tiny_weights(WHOLE), PROMPT)[-1]
    engine_factory.assert_matches_reference(logits, expected, tiny_weights)


def test_inner_shard_returns_hidden_states(
    engine_factory: EngineFactory, tiny_weights: WeightsFor
) -> None:
    hidden = engine_factory.engine_for(tiny_weights, 0, 1).forward("r", PROMPT)
    assert hidden.shape == (len(PROMPT), TINY.hidden_size) and hidden.dtype == np.float32
    expected = reference_forward(tiny_weights(Shard("tiny", 0, 1, TINY.num_layers)), PROMPT)
    engine_factory.assert_matches_reference(hidden, expected, tiny_weights)
    out = engine_factory.engine_for(tiny_weights, 2, 2).forward("r", hidden)
    assert out.shape == hidden.shape and not np.allclose(out, hidden)


@pytest.mark.parametrize(
    "bounds",
    [[(0, 0), (1, 3)], [(0, 1), (2, 3)], [(0, 2), (3, 3)], [(0, 0), (1, 1), (2, 2), (3, 3)]],
    ids=lambda b: "|".join(f"{s}-{e}" for s, e in b),
)
def test_chained_shards_equal_unsplit(
    engine_factory: EngineFactory, tiny_weights: WeightsFor, bounds: list[tuple[int, int]]
) -> None:
    unsplit = engine_factory.whole(tiny_weights)
    engines = [engine_factory.engine_for(tiny_weights, s, e) for s, e in bounds]
    engine_factory.assert_close(run_chain(engines, "r", PROMPT), unsplit.forward("r", PROMPT))
    # Decode steps keep agreeing once every shard holds a cache (and tinygrad's replay kicks in).
    for token in (7, 50, 1, 95):
        step = np.array([token], np.int32)
        engine_factory.assert_close(run_chain(engines, "r", step), unsplit.forward("r", step))


def test_prefill_then_decode_equals_full_prefill(
    engine_factory: EngineFactory, tiny_weights: WeightsFor
) -> None:
    full = engine_factory.whole(tiny_weights).forward("r", PROMPT)
    engine = engine_factory.whole(tiny_weights)
    engine.forward("r", PROMPT[:-4])
    for token in PROMPT[-4:]:
        logits = engine.forward("r", np.array([token], np.int32))
    assert engine.cache_length("r") == len(PROMPT)
    engine_factory.assert_close(logits, full)


def test_interleaved_requests_do_not_disturb_each_other(
    engine_factory: EngineFactory, tiny_weights: WeightsFor
) -> None:
    other = PROMPT[::-1].copy()
    alone = engine_factory.whole(tiny_weights)
    expected_a = [alone.forward("a", PROMPT), alone.forward("a", np.array([4], np.int32))]
    alone.release("a")
    expected_b = [alone.forward("b", other), alone.forward("b", np.array([8], np.int32))]

    engine = engine_factory.whole(tiny_weights)
    got_a0 = engine.forward("a", PROMPT)
    got_b0 = engine.forward("b", other)
    got_a1 = engine.forward("a", np.array([4], np.int32))
    got_b1 = engine.forward("b", np.array([8], np.int32))
    for got, want in zip([got_a0, got_a1, got_b0, got_b1], expected_a + expected_b, strict=True):
        engine_factory.assert_close(got, want)
    assert engine.active_requests() == 2


def test_batched_decode_equals_one_at_a_time(
    engine_factory: EngineFactory, tiny_weights: WeightsFor
) -> None:
    prompts = {"a": PROMPT, "b": PROMPT[:5], "c": PROMPT[3:]}  # different cache lengths
    single, batched = engine_factory.whole(tiny_weights), engine_factory.whole(tiny_weights)
    for rid, prompt in prompts.items():
        single.forward(rid, prompt)
        batched.forward(rid, prompt)
    for step in range(4):
        items = [ForwardItem(rid, np.array([step + i], np.int32)) for i, rid in enumerate(prompts)]
        got = batched.forward_batch(items)
        want = [single.forward(item.request_id, item.inputs) for item in items]
        for g, w in zip(got, want, strict=True):
            engine_factory.assert_close(g, w)
    assert batched.cache_length("b") == 5 + 4


def test_batched_hidden_states_on_inner_shard(
    engine_factory: EngineFactory, tiny_weights: WeightsFor
) -> None:
    first = engine_factory.engine_for(tiny_weights, 0, 1)
    batched = engine_factory.engine_for(tiny_weights, 2, 2)
    single = engine_factory.engine_for(tiny_weights, 2, 2)
    for rid, prompt in (("a", PROMPT), ("b", PROMPT[:4])):
        hidden = first.forward(rid, prompt)
        batched.forward(rid, hidden)
        single.forward(rid, hidden)
    items = [
        ForwardItem(rid, first.forward(rid, np.array([t], np.int32)))
        for rid, t in [("a", 1), ("b", 2)]
    ]
    got = batched.forward_batch(items)
    for item, g in zip(items, got, strict=True):
        assert g.shape == (1, TINY.hidden_size)
        engine_factory.assert_close(g, single.forward(item.request_id, item.inputs))


def test_mixed_batch_keeps_order_and_per_request_sequence(
    engine_factory: EngineFactory, tiny_weights: WeightsFor
) -> None:
    single, batched = engine_factory.whole(tiny_weights), engine_factory.whole(tiny_weights)
    single.forward("a", PROMPT)
    batched.forward("a", PROMPT)
    items = [
        ForwardItem("a", np.array([1], np.int32)),
        ForwardItem("new", PROMPT[:6]),  # a prefill runs on its own
        ForwardItem("a", np.array([2], np.int32)),  # same request twice: in order
        ForwardItem("b", np.array([3], np.int32)),  # a one-token prompt
    ]
    got = batched.forward_batch(items)
    want = [single.forward(item.request_id, item.inputs) for item in items]
    assert len(got) == len(items)
    for g, w in zip(got, want, strict=True):
        engine_factory.assert_close(g, w)
    assert batched.cache_length("a") == len(PROMPT) + 2
    assert batched.forward_batch([]) == []


def test_release_frees_the_cache(engine_factory: EngineFactory, tiny_weights: WeightsFor) -> None:
    engine = engine_factory.whole(tiny_weights)
    first = engine.forward("r", PROMPT)
    engine.forward("other", PROMPT[:3])
    assert engine.cache_length("r") == len(PROMPT) and engine.cache_bytes() > 0
    engine.release("r")
    engine.release("never-seen")
    assert engine.cache_length("r") == 0 and engine.active_requests() == 1
    # The id starts over from position 0.
    engine_factory.assert_close(engine.forward("r", PROMPT), first)
    engine.release("r")
    engine.release("other")
    assert engine.active_requests() == 0 and engine.cache_bytes() == 0


def test_a_request_after_released_ones_answers_as_on_a_fresh_engine(
    engine_factory: EngineFactory, tiny_weights: WeightsFor
) -> None:
    """Engines may hand a released request's cache to a new one (tinygrad does):
    nothing the old request left there may show in the new one's results."""
    used, fresh = engine_factory.whole(tiny_weights), engine_factory.whole(tiny_weights)
    long_prompt = np.concatenate([PROMPT] * 6)
    for old in ("a", "b"):
        used.forward(old, long_prompt)
        used.forward(old, PROMPT[:1])
        used.release(old)
    short = PROMPT[:3]
    assert np.array_equal(used.forward("new", short), fresh.forward("new", short))
    for token in PROMPT[3:7]:
        step = np.array([token], np.int32)
        assert np.array_equal(used.forward("new", step), fresh.forward("new", step))


def test_context_overflow_raises_and_keeps_the_cache(
    engine_factory: EngineFactory, tiny_weights: WeightsFor
) -> None:
    engine = engine_factory.whole(tiny_weights, max_context=12)
    engine.forward("r", PROMPT)  # 11 positions
    engine.forward("r", np.array([1], np.int32))  # exactly full is fine
    with pytest.raises(ContextOverflowError):
        engine.forward("r", np.array([2], np.int32))
    with pytest.raises(ContextOverflowError):
        engine.forward("fresh", np.zeros(13, np.int32))
    with pytest.raises(ContextOverflowError):
        engine.forward_batch([ForwardItem("x", PROMPT), ForwardItem("x", PROMPT[:2])])
    assert engine.cache_length("r") == 12 and engine.active_requests() == 1


def test_bad_inputs_raise_engine_errors(
    engine_factory: EngineFactory, tiny_weights: WeightsFor
) -> None:
    first = engine_factory.whole(tiny_weights)
    inner = engine_factory.engine_for(tiny_weights, 1, 3)
    bad_first = [
        np.array([], np.int32),
        np.array([1.0, 2.0], np.float32),
        np.array([[1, 2]], np.int32),
        np.array([TINY.vocab_size], np.int32),
        np.array([-1], np.int32),
    ]
    for inputs in bad_first:
        with pytest.raises(EngineError):
            first.forward("r", inputs)
    for inputs in [np.zeros((2, TINY.hidden_size + 1), np.float32), np.zeros((2, 64), np.int32)]:
        with pytest.raises(EngineError):
            inner.forward("r", inputs)
    assert first.active_requests() == inner.active_requests() == 0
    with pytest.raises(EngineError, match="no shard"):
        engine_factory.kind().forward("r", PROMPT)


def test_load_replaces_shard_and_caches(
    engine_factory: EngineFactory, tiny_weights: WeightsFor
) -> None:
    engine = engine_factory.whole(tiny_weights)
    engine.forward("r", PROMPT)
    shard = Shard("tiny", 0, 1, TINY.num_layers)
    engine.load(tiny_weights(shard))
    assert engine.shard == shard and engine.active_requests() == 0
    engine.unload()
    assert engine.shard is None


def test_untied_head_and_float64_hidden_inputs(engine_factory: EngineFactory) -> None:
    weights = weights_factory(dataclasses.replace(TINY, tie_word_embeddings=False), quantized=True)
    expected = engine_factory.engine_for(weights, 0, 3).forward("r", PROMPT)
    hidden = engine_factory.engine_for(weights, 0, 0).forward("r", PROMPT)
    got = engine_factory.engine_for(weights, 1, 3).forward("r", hidden.astype(np.float64))
    engine_factory.assert_close(got, expected)


def test_forward_from_other_threads(
    engine_factory: EngineFactory, tiny_weights: WeightsFor
) -> None:
    # Orchestration calls engines from trio's worker threads, not always the same one.
    engine = engine_factory.whole(tiny_weights)
    expected = engine_factory.whole(tiny_weights).forward("r", PROMPT)
    results: list[np.ndarray] = []
    for part in (PROMPT[:6], PROMPT[6:]):
        thread = threading.Thread(target=lambda p=part: results.append(engine.forward("r", p)))
        thread.start()
        thread.join()
    engine_factory.assert_close(results[-1], expected)


@pytest.mark.parametrize("bounds", [[(0, 3)], [(0, 1), (2, 3)]], ids=["whole", "split"])
def test_all_logits_scores_every_prompt_position(
    engine_factory: EngineFactory, tiny_weights: WeightsFor, bounds: list[tuple[int, int]]
) -> None:
    engines = [engine_factory.engine_for(tiny_weights, s, e) for s, e in bounds]
    x: np.ndarray = PROMPT
    for engine in engines:
        x = engine.forward_batch([ForwardItem("r", x, all_logits=True)])[0]
    assert x.shape == (len(PROMPT), TINY.vocab_size) and x.dtype == np.float32
    expected = reference_forward(tiny_weights(WHOLE), PROMPT)
    engine_factory.assert_matches_reference(x, expected, tiny_weights)
    # The cache is the same as a plain prefill's: the next step agrees with one.
    plain = engine_factory.whole(tiny_weights)
    plain.forward("r", PROMPT)
    step = np.array([7], np.int32)
    engine_factory.assert_close(run_chain(engines, "r", step), plain.forward("r", step))


def test_all_logits_of_a_one_token_prompt_beside_a_decode_batch(
    engine_factory: EngineFactory, tiny_weights: WeightsFor
) -> None:
    engine = engine_factory.whole(tiny_weights)
    engine.forward("other", PROMPT)
    outs = engine.forward_batch(
        [ForwardItem("r", PROMPT[:1], all_logits=True), ForwardItem("other", PROMPT[:1])]
    )
    assert outs[0].shape == (1, TINY.vocab_size) and outs[1].shape == (TINY.vocab_size,)
    expected = reference_forward(tiny_weights(WHOLE), PROMPT[:1])
    engine_factory.assert_matches_reference(outs[0], expected, tiny_weights)
