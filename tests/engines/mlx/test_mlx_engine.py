"""MLXEngine on tiny random models: sharding, caches, batching, errors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading

import numpy as np
import pytest
from engines.reference import reference_forward
from mlx_tiny import TINY, WeightsFor, weights_factory

from exoquic.engines.base import ContextOverflowError, EngineError, ForwardItem
from exoquic.engines.mlx.engine import MLXEngine
from exoquic.models.shard import Shard

PROMPT = np.array([5, 17, 3, 88, 42, 0, 61, 9, 33, 70, 2], dtype=np.int32)
# Same float32 operations on the same data: only MLX's kernel choice for
# different shapes (batch rows, prefill length) can change the rounding.
ATOL = 1e-4
# float32 MLX against the float64 numpy oracle: values reach ~16, errors ~5e-6.
REF_ATOL = 1e-4


def engine_for(weights: WeightsFor, start: int, end: int, max_context: int = 2048) -> MLXEngine:
    engine = MLXEngine(max_context=max_context)
    engine.load(weights(Shard("tiny", start, end, TINY.num_layers)))
    return engine


def whole(weights: WeightsFor, max_context: int = 2048) -> MLXEngine:
    return engine_for(weights, 0, TINY.num_layers - 1, max_context)


def run_chain(engines: list[MLXEngine], request_id: str, tokens: np.ndarray) -> np.ndarray:
    x: np.ndarray = tokens
    for engine in engines:
        x = engine.forward(request_id, x)
    return x


def test_whole_shard_returns_last_position_logits(tiny_weights: WeightsFor) -> None:
    logits = whole(tiny_weights).forward("r", PROMPT)
    assert logits.shape == (TINY.vocab_size,) and logits.dtype == np.float32
    assert np.all(np.isfinite(logits)) and np.std(logits) > 0.1


def test_inner_shard_returns_hidden_states(tiny_weights: WeightsFor) -> None:
    hidden = engine_for(tiny_weights, 0, 1).forward("r", PROMPT)
    assert hidden.shape == (len(PROMPT), TINY.hidden_size) and hidden.dtype == np.float32
    out = engine_for(tiny_weights, 2, 2).forward("r", hidden)
    assert out.shape == hidden.shape and not np.allclose(out, hidden)


@pytest.mark.parametrize(
    "bounds",
    [[(0, 0), (1, 3)], [(0, 1), (2, 3)], [(0, 2), (3, 3)], [(0, 0), (1, 1), (2, 2), (3, 3)]],
    ids=lambda b: "|".join(f"{s}-{e}" for s, e in b),
)
def test_chained_shards_equal_unsplit(
    tiny_weights: WeightsFor, bounds: list[tuple[int, int]]
) -> None:
    expected = whole(tiny_weights).forward("r", PROMPT)
    engines = [engine_for(tiny_weights, s, e) for s, e in bounds]
    np.testing.assert_allclose(run_chain(engines, "r", PROMPT), expected, atol=ATOL, rtol=0)
    # Decode steps keep agreeing once every shard holds a cache.
    unsplit = whole(tiny_weights)
    unsplit.forward("r", PROMPT)
    for token in (7, 50):
        step = np.array([token], np.int32)
        np.testing.assert_allclose(
            run_chain(engines, "r", step), unsplit.forward("r", step), atol=ATOL, rtol=0
        )


def test_prefill_then_decode_equals_full_prefill(tiny_weights: WeightsFor) -> None:
    full = whole(tiny_weights).forward("r", PROMPT)
    engine = whole(tiny_weights)
    engine.forward("r", PROMPT[:-3])
    for token in PROMPT[-3:]:
        logits = engine.forward("r", np.array([token], np.int32))
    assert engine.cache_length("r") == len(PROMPT)
    np.testing.assert_allclose(logits, full, atol=ATOL, rtol=0)


def test_chunked_prefill_equals_full_prefill(tiny_weights: WeightsFor) -> None:
    full = whole(tiny_weights).forward("r", PROMPT)
    engine = whole(tiny_weights)
    engine.forward("r", PROMPT[:4])
    np.testing.assert_allclose(engine.forward("r", PROMPT[4:]), full, atol=ATOL, rtol=0)


def test_cache_grows_past_its_allocation_step(tiny_weights: WeightsFor) -> None:
    tokens = np.arange(300, dtype=np.int32) % TINY.vocab_size
    full = whole(tiny_weights).forward("r", tokens)
    engine = whole(tiny_weights)
    engine.forward("r", tokens[:250])  # the cache grows in steps of 256 positions
    engine.forward("r", tokens[250:299])
    logits = engine.forward("r", tokens[299:])
    np.testing.assert_allclose(logits, full, atol=ATOL, rtol=0)


def test_interleaved_requests_do_not_disturb_each_other(tiny_weights: WeightsFor) -> None:
    other = PROMPT[::-1].copy()
    alone = whole(tiny_weights)
    expected_a = [alone.forward("a", PROMPT), alone.forward("a", np.array([4], np.int32))]
    alone.release("a")
    expected_b = [alone.forward("b", other), alone.forward("b", np.array([8], np.int32))]

    engine = whole(tiny_weights)
    got_a0 = engine.forward("a", PROMPT)
    got_b0 = engine.forward("b", other)
    got_a1 = engine.forward("a", np.array([4], np.int32))
    got_b1 = engine.forward("b", np.array([8], np.int32))
    for got, want in zip([got_a0, got_a1, got_b0, got_b1], expected_a + expected_b, strict=True):
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)
    assert engine.active_requests() == 2


def test_batched_decode_equals_one_at_a_time(tiny_weights: WeightsFor) -> None:
    prompts = {"a": PROMPT, "b": PROMPT[:5], "c": PROMPT[3:]}  # different cache lengths
    single, batched = whole(tiny_weights), whole(tiny_weights)
    for rid, prompt in prompts.items():
        single.forward(rid, prompt)
        batched.forward(rid, prompt)
    for step in range(3):
        items = [ForwardItem(rid, np.array([step + i], np.int32)) for i, rid in enumerate(prompts)]
        got = batched.forward_batch(items)
        want = [single.forward(item.request_id, item.inputs) for item in items]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, atol=ATOL, rtol=0)
    assert batched.cache_length("b") == 5 + 3


def test_batched_hidden_states_on_inner_shard(tiny_weights: WeightsFor) -> None:
    first = engine_for(tiny_weights, 0, 1)
    batched, single = engine_for(tiny_weights, 2, 2), engine_for(tiny_weights, 2, 2)
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
        np.testing.assert_allclose(
            g, single.forward(item.request_id, item.inputs), atol=ATOL, rtol=0
        )


def test_mixed_batch_keeps_order_and_per_request_sequence(tiny_weights: WeightsFor) -> None:
    single, batched = whole(tiny_weights), whole(tiny_weights)
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
        np.testing.assert_allclose(g, w, atol=ATOL, rtol=0)
    assert batched.cache_length("a") == len(PROMPT) + 2
    assert batched.forward_batch([]) == []


def test_release_frees_the_cache(tiny_weights: WeightsFor) -> None:
    engine = whole(tiny_weights)
    first = engine.forward("r", PROMPT)
    engine.forward("other", PROMPT[:3])
    assert engine.cache_length("r") == len(PROMPT) and engine.cache_bytes() > 0
    engine.release("r")
    engine.release("never-seen")
    assert engine.cache_length("r") == 0 and engine.active_requests() == 1
    # The id starts over from position 0.
    np.testing.assert_allclose(engine.forward("r", PROMPT), first, atol=ATOL, rtol=0)
    engine.release("r")
    engine.release("other")
    assert engine.active_requests() == 0 and engine.cache_bytes() == 0


def test_context_overflow_raises_and_keeps_the_cache(tiny_weights: WeightsFor) -> None:
    engine = whole(tiny_weights, max_context=12)
    engine.forward("r", PROMPT)  # 11 positions
    engine.forward("r", np.array([1], np.int32))  # exactly full is fine
    with pytest.raises(ContextOverflowError):
        engine.forward("r", np.array([2], np.int32))
    with pytest.raises(ContextOverflowError):
        engine.forward("fresh", np.zeros(13, np.int32))
    with pytest.raises(ContextOverflowError):
        engine.forward_batch([ForwardItem("x", PROMPT), ForwardItem("x", PROMPT[:2])])
    assert engine.cache_length("r") == 12 and engine.active_requests() == 1


def test_bad_inputs_raise_engine_errors(tiny_weights: WeightsFor) -> None:
    first, inner = whole(tiny_weights), engine_for(tiny_weights, 1, 3)
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
        MLXEngine().forward("r", PROMPT)


def test_load_replaces_shard_and_caches(tiny_weights: WeightsFor) -> None:
    engine = whole(tiny_weights)
    engine.forward("r", PROMPT)
    shard = Shard("tiny", 0, 1, TINY.num_layers)
    engine.load(tiny_weights(shard))
    assert engine.shard == shard and engine.active_requests() == 0
    engine.unload()
    assert engine.shard is None


def test_untied_head_and_float64_hidden_inputs() -> None:
    weights = weights_factory(dataclasses.replace(TINY, tie_word_embeddings=False), quantized=True)
    expected = engine_for(weights, 0, 3).forward("r", PROMPT)
    hidden = engine_for(weights, 0, 0).forward("r", PROMPT)
    got = engine_for(weights, 1, 3).forward("r", hidden.astype(np.float64))
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


def test_forward_from_other_threads(tiny_weights: WeightsFor) -> None:
    # Orchestration calls engines from trio's worker threads, not always the same one.
    engine = whole(tiny_weights)
    expected = whole(tiny_weights).forward("r", PROMPT)
    results: list[np.ndarray] = []
    thread = threading.Thread(target=lambda: results.append(engine.forward("r", PROMPT[:6])))
    thread.start()
    thread.join()
    thread = threading.Thread(target=lambda: results.append(engine.forward("r", PROMPT[6:])))
    thread.start()
    thread.join()
    np.testing.assert_allclose(results[-1], expected, atol=ATOL, rtol=0)


def test_engines_package_does_not_import_mlx() -> None:
    code = "import sys, exoquic.engines, exoquic.engines.mlx; print('mlx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("bounds", [(0, 3), (0, 1), (1, 2), (2, 3)], ids=lambda b: f"{b[0]}-{b[1]}")
def test_matches_numpy_reference(tiny_weights: WeightsFor, bounds: tuple[int, int]) -> None:
    shard = Shard("tiny", bounds[0], bounds[1], TINY.num_layers)
    weights = tiny_weights(shard)
    inputs: np.ndarray = PROMPT
    if not shard.is_first:
        inputs = reference_forward(tiny_weights(Shard("tiny", 0, shard.start_layer - 1, 4)), PROMPT)
    expected = reference_forward(weights, inputs)
    engine = MLXEngine()
    engine.load(weights)
    # Prefill all but the last position, then a decode step: both paths are checked.
    head = engine.forward("r", inputs[:-1])
    tail = engine.forward("r", inputs[-1:])
    if shard.is_last:
        np.testing.assert_allclose(tail, expected[-1], atol=REF_ATOL, rtol=0)
    else:
        got = np.concatenate([head, tail])
        np.testing.assert_allclose(got, expected, atol=REF_ATOL, rtol=0)
