"""TinygradEngine on tiny random models: sharding, caches, batching, errors.

The engine's default (fast) path feeds quantized weights int16-quantized
activations, so against the float64 reference it is close (~1e-4 of the
logit scale) but not float32-exact. Between its own code paths it must agree
to float32 noise: splitting into shards and batching decode steps change
nothing at all; prefill chunks of 16+ rows use a float32 GEMM where decode
uses integer dot products, which differ by rounding (~1e-5 of the scale).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from engines.reference import reference_forward
from tinygrad_tiny import TINY, WeightsFor

from exoquic.engines.base import ContextOverflowError, EngineError, ForwardItem
from exoquic.engines.tinygrad.engine import TinygradEngine, _pick_bucket
from exoquic.models.shard import Shard

PROMPT = np.array([5, 17, 3, 88, 42, 0, 61, 9, 33, 70, 2], dtype=np.int32)
ATOL = 1e-4  # float weights against the reference


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    """Equal to float32 noise (relative to the values' scale)."""
    atol = 1e-4 * max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, atol=atol, rtol=0)


def engine_for(weights: WeightsFor, start: int, end: int, max_context: int = 256) -> TinygradEngine:
    engine = TinygradEngine(max_context=max_context)
    engine.load(weights(Shard("tiny", start, end, TINY.num_layers)))
    return engine


def whole(weights: WeightsFor, max_context: int = 256) -> TinygradEngine:
    return engine_for(weights, 0, TINY.num_layers - 1, max_context)


def run_chain(engines: list[TinygradEngine], request_id: str, tokens: np.ndarray) -> np.ndarray:
    x: np.ndarray = tokens
    for engine in engines:
        x = engine.forward(request_id, x)
    return x


def reference_tolerance(weights: WeightsFor, reference: np.ndarray) -> float:
    quantized = not isinstance(
        weights(Shard.whole("tiny", TINY.num_layers)).tensors["model.layers.0.mlp.up_proj.weight"],
        np.ndarray,
    )
    return 1e-3 * float(np.abs(reference).max()) if quantized else ATOL


def test_whole_shard_matches_the_reference(tiny_weights: WeightsFor) -> None:
    logits = whole(tiny_weights).forward("r", PROMPT)
    assert logits.shape == (TINY.vocab_size,) and logits.dtype == np.float32
    expected = reference_forward(tiny_weights(Shard.whole("tiny", TINY.num_layers)), PROMPT)[-1]
    atol = reference_tolerance(tiny_weights, expected)
    np.testing.assert_allclose(logits, expected, atol=atol, rtol=0)


def test_inner_shard_returns_hidden_states(tiny_weights: WeightsFor) -> None:
    hidden = engine_for(tiny_weights, 0, 1).forward("r", PROMPT)
    assert hidden.shape == (len(PROMPT), TINY.hidden_size) and hidden.dtype == np.float32
    expected = reference_forward(tiny_weights(Shard("tiny", 0, 1, TINY.num_layers)), PROMPT)
    atol = reference_tolerance(tiny_weights, expected)
    np.testing.assert_allclose(hidden, expected, atol=atol, rtol=0)


@pytest.mark.parametrize(
    "bounds",
    [[(0, 0), (1, 3)], [(0, 1), (2, 3)], [(0, 2), (3, 3)], [(0, 0), (1, 1), (2, 2), (3, 3)]],
    ids=lambda b: "|".join(f"{s}-{e}" for s, e in b),
)
def test_chained_shards_equal_unsplit(
    tiny_weights: WeightsFor, bounds: list[tuple[int, int]]
) -> None:
    unsplit = whole(tiny_weights)
    engines = [engine_for(tiny_weights, s, e) for s, e in bounds]
    assert_close(run_chain(engines, "r", PROMPT), unsplit.forward("r", PROMPT))
    # Decode steps keep agreeing once every shard holds a cache (and the replay kicks in).
    for token in (7, 50, 1, 95):
        step = np.array([token], np.int32)
        assert_close(run_chain(engines, "r", step), unsplit.forward("r", step))


def test_prefill_then_decode_equals_full_prefill(tiny_weights: WeightsFor) -> None:
    full = whole(tiny_weights).forward("r", PROMPT)
    engine = whole(tiny_weights)
    engine.forward("r", PROMPT[:-4])
    for token in PROMPT[-4:]:
        logits = engine.forward("r", np.array([token], np.int32))
    assert engine.cache_length("r") == len(PROMPT)
    assert_close(logits, full)


def test_decode_replay_stays_exact(tiny_weights: WeightsFor) -> None:
    # The first decode steps run through tinygrad, later ones through the flattened kernels.
    tokens = np.arange(12, dtype=np.int32) * 7 % TINY.vocab_size
    engine = whole(tiny_weights)
    engine.forward("r", tokens[:2])
    stepped = [engine.forward("r", tokens[i : i + 1]) for i in range(2, len(tokens))]
    reference = whole(tiny_weights)
    for i in range(2, len(tokens)):
        want = reference.forward("fresh", tokens[: i + 1])
        reference.release("fresh")
        assert_close(stepped[i - 2], want)
    assert engine.flattened_steps() >= 1


def test_long_prompt_runs_in_chunks(tiny_weights: WeightsFor) -> None:
    tokens = np.arange(150, dtype=np.int32) * 5 % TINY.vocab_size  # chunks of 128 + 32
    engine = whole(tiny_weights)
    logits = engine.forward("r", tokens)
    stepped = whole(tiny_weights)
    stepped.forward("r", tokens[:100])
    stepped.forward("r", tokens[100:149])
    assert_close(stepped.forward("r", tokens[149:]), logits)
    expected = reference_forward(tiny_weights(Shard.whole("tiny", TINY.num_layers)), tokens)[-1]
    atol = reference_tolerance(tiny_weights, expected)
    np.testing.assert_allclose(logits, expected, atol=atol, rtol=0)


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
        assert_close(got, want)
    assert engine.active_requests() == 2


def test_batched_decode_equals_one_at_a_time(tiny_weights: WeightsFor) -> None:
    prompts = {"a": PROMPT, "b": PROMPT[:5], "c": PROMPT[3:]}  # different cache lengths
    single, batched = whole(tiny_weights), whole(tiny_weights)
    for rid, prompt in prompts.items():
        single.forward(rid, prompt)
        batched.forward(rid, prompt)
    for step in range(4):
        items = [ForwardItem(rid, np.array([step + i], np.int32)) for i, rid in enumerate(prompts)]
        got = batched.forward_batch(items)
        want = [single.forward(item.request_id, item.inputs) for item in items]
        for g, w in zip(got, want, strict=True):
            assert_close(g, w)
    assert batched.cache_length("b") == 5 + 4


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
        assert_close(g, single.forward(item.request_id, item.inputs))


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
        assert_close(g, w)
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
    assert_close(engine.forward("r", PROMPT), first)
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
        TinygradEngine().forward("r", PROMPT)


def test_load_replaces_shard_and_caches(tiny_weights: WeightsFor) -> None:
    engine = whole(tiny_weights)
    engine.forward("r", PROMPT)
    shard = Shard("tiny", 0, 1, TINY.num_layers)
    engine.load(tiny_weights(shard))
    assert engine.shard == shard and engine.active_requests() == 0
    engine.unload()
    assert engine.shard is None


def test_threads_do_not_change_results(tiny_weights: WeightsFor) -> None:
    shard = Shard.whole("tiny", TINY.num_layers)
    results = []
    for threads in (1, 2):
        engine = TinygradEngine(max_context=256, threads=threads)
        engine.load(tiny_weights(shard))
        out = [engine.forward("r", PROMPT)]
        out += [engine.forward("r", np.array([t], np.int32)) for t in (3, 9, 27, 81)]
        results.append(np.stack(out))
    np.testing.assert_array_equal(results[0], results[1])


def test_forward_from_other_threads(tiny_weights: WeightsFor) -> None:
    # Orchestration calls engines from trio's worker threads, not always the same one.
    engine = whole(tiny_weights)
    expected = whole(tiny_weights).forward("r", PROMPT)
    results: list[np.ndarray] = []
    for part in (PROMPT[:6], PROMPT[6:]):
        thread = threading.Thread(target=lambda p=part: results.append(engine.forward("r", p)))
        thread.start()
        thread.join()
    assert_close(results[-1], expected)


@pytest.mark.slow  # tinygrad compiles ~40 generated kernels (~15 s a parameter on 2 cores)
def test_portable_path_matches_the_reference(tiny_weights: WeightsFor) -> None:
    # fast=False: tinygrad-generated kernels only, float32 activations.
    shard = Shard.whole("tiny", TINY.num_layers)
    engine = TinygradEngine(max_context=256, fast=False)
    engine.load(tiny_weights(shard))
    engine.forward("r", PROMPT[:-3])
    for i in range(len(PROMPT) - 3, len(PROMPT)):
        logits = engine.forward("r", PROMPT[i : i + 1])
    expected = reference_forward(tiny_weights(shard), PROMPT)[-1]
    np.testing.assert_allclose(logits, expected, atol=ATOL, rtol=0)


def test_warm_up_traces_the_steps_and_leaves_no_request(tiny_weights: WeightsFor) -> None:
    engine = whole(tiny_weights)
    engine.warm_up(prompt_lengths=(len(PROMPT),))
    assert engine.active_requests() == 0 and engine.flattened_steps() == 3  # prefill, decode, head
    inner = engine_for(tiny_weights, 1, 2)
    inner.warm_up(prompt_lengths=(5,))
    assert inner.active_requests() == 0 and inner.flattened_steps() == 2
    assert_close(engine.forward("r", PROMPT), whole(tiny_weights).forward("r", PROMPT))


def test_engines_in_parallel_threads(tiny_weights: WeightsFor) -> None:
    # Several nodes in one process each drive their engine from its own thread.
    expected = whole(tiny_weights).forward("r", PROMPT)
    engines = [whole(tiny_weights) for _ in range(3)]
    results: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        engines[i].forward("r", PROMPT[:-2])
        engines[i].forward("r", PROMPT[-2:-1])
        results[i] = engines[i].forward("r", PROMPT[-1:])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(3):
        assert_close(results[i], expected)


@pytest.mark.parametrize("count", [19, 9])
def test_large_decode_batches_are_split_and_padded(tiny_weights: WeightsFor, count: int) -> None:
    # 19 requests: one traced batch of 16, then a batch of 3;
    # 9 requests: padded to 12 (three padded rows, each with its own scratch cache).
    engine, single = whole(tiny_weights), whole(tiny_weights)
    ids = [f"r{i}" for i in range(count)]
    for i, rid in enumerate(ids):
        engine.forward(rid, PROMPT[: 2 + i % 9])
        single.forward(rid, PROMPT[: 2 + i % 9])
    items = [
        ForwardItem(rid, np.array([i % TINY.vocab_size], np.int32)) for i, rid in enumerate(ids)
    ]
    got = engine.forward_batch(items)
    for item, g in zip(items, got, strict=True):
        assert_close(g, single.forward(item.request_id, item.inputs))
    last = count - 1
    assert engine.active_requests() == count
    assert engine.cache_length(f"r{last}") == 2 + last % 9 + 1


@pytest.mark.parametrize(
    ("remaining", "bucket"), [(1, 32), (33, 32), (100, 128), (256, 128), (300, 128), (511, 512)]
)
def test_prefill_chunks_are_sized_to_waste_little_padding(remaining: int, bucket: int) -> None:
    assert _pick_bucket(remaining, room=4096) == bucket


def test_a_prefill_chunk_never_outgrows_the_cache() -> None:
    assert _pick_bucket(300, room=200) == 128
    assert _pick_bucket(10, room=40) == 32
