"""TinygradEngine on tiny random models: what only tinygrad has (replay, buckets, threads).

What every engine must do is in tests/engines/test_engine_contract.py.
How close its results must be (int16 activations on the fast path) is in
tests/engines/engine_factories.py.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from engines.engine_factories import PROMPT, TINYGRAD
from engines.reference import reference_forward
from engines.tiny_model import TINY, WeightsFor

from exoquic.engines.base import ForwardItem
from exoquic.engines.tinygrad.engine import TinygradEngine, _pick_bucket
from exoquic.models.shard import Shard

ATOL = 1e-4  # float weights against the reference
engine_for, whole, assert_close = TINYGRAD.engine_for, TINYGRAD.whole, TINYGRAD.assert_close


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
    TINYGRAD.assert_matches_reference(logits, expected, tiny_weights)


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
    # 19 requests: one traced batch of 15, then a batch of 4;
    # 9 requests: padded to 12 (three padded rows, each with its own scratch cache).
    # Each row is bit for bit what that request alone would get: a request's tokens
    # must not depend on its neighbours (nor a replay, which runs alone, on them).
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
        np.testing.assert_array_equal(g, single.forward(item.request_id, item.inputs))
    last = count - 1
    assert engine.active_requests() == count
    assert engine.cache_length(f"r{last}") == 2 + last % 9 + 1


@pytest.mark.parametrize(
    ("remaining", "bucket"),
    [(1, 32), (33, 32), (40, 32), (100, 128), (256, 128), (300, 128), (511, 128)],
)
def test_prefill_chunks_are_sized_to_waste_little_padding(remaining: int, bucket: int) -> None:
    assert _pick_bucket(remaining, room=4096) == bucket


def test_a_prefill_chunk_never_outgrows_the_cache() -> None:
    assert _pick_bucket(300, room=200) == 128
    assert _pick_bucket(10, room=40) == 32
