"""`copy_prefix`: a request started from another's cached prefix computes what a
cold run computes, prefills only its new positions, and shares no memory.

Each test runs against MLXEngine and TinygradEngine, whole and split in two.
"""

from __future__ import annotations

import numpy as np
import pytest
from engines.engine_factories import FACTORIES, PROMPT, EngineFactory, run_chain
from engines.tiny_model import TINY, WeightsFor

from exoquic.engines.base import EngineError

SHARED = 8  # positions the two prompts share
SECOND = np.concatenate([PROMPT[:SHARED], np.array([7, 1, 50, 4], dtype=np.int32)])
SPLITS = {"whole": [(0, TINY.num_layers - 1)], "split": [(0, 1), (2, TINY.num_layers - 1)]}


@pytest.fixture(params=list(FACTORIES))
def engine_factory(request: pytest.FixtureRequest) -> EngineFactory:
    return FACTORIES[request.param]


@pytest.fixture(params=list(SPLITS))
def bounds(request: pytest.FixtureRequest) -> list[tuple[int, int]]:
    return SPLITS[request.param]


def _engines(factory: EngineFactory, weights: WeightsFor, bounds: list[tuple[int, int]]) -> list:
    return [factory.engine_for(weights, start, end) for start, end in bounds]


def test_copied_prefix_then_rest_equals_cold_run(
    engine_factory: EngineFactory, tiny_weights: WeightsFor, bounds: list[tuple[int, int]]
) -> None:
    cached = _engines(engine_factory, tiny_weights, bounds)
    run_chain(cached, "first", PROMPT)
    for engine in cached:
        engine.copy_prefix("first", "second", SHARED)
        assert engine.cache_length("second") == SHARED
    reused = run_chain(cached, "second", SECOND[SHARED:])

    cold = _engines(engine_factory, tiny_weights, bounds)
    run_chain(cold, "cold", SECOND[:SHARED])
    # Same positions computed in the same pieces: exactly the same logits.
    np.testing.assert_array_equal(reused, run_chain(cold, "cold", SECOND[SHARED:]))
    # And, to rounding, what one prefill of the whole prompt gives.
    whole = _engines(engine_factory, tiny_weights, bounds)
    engine_factory.assert_close(reused, run_chain(whole, "whole", SECOND))


def test_second_request_runs_only_its_new_positions(
    engine_factory: EngineFactory, tiny_weights: WeightsFor, bounds: list[tuple[int, int]]
) -> None:
    engines = _engines(engine_factory, tiny_weights, bounds)
    run_chain(engines, "first", PROMPT)
    before = [engine.positions_run for engine in engines]
    for engine in engines:
        engine.copy_prefix("first", "second", SHARED)
    run_chain(engines, "second", SECOND[SHARED:])
    assert [e.positions_run - b for e, b in zip(engines, before, strict=True)] == [
        len(SECOND) - SHARED
    ] * len(engines)


def test_copy_is_the_new_requests_own(
    engine_factory: EngineFactory, tiny_weights: WeightsFor
) -> None:
    """Writing the copy leaves the source as it was, and the other way round."""
    engine = engine_factory.whole(tiny_weights)
    engine.forward("first", PROMPT)
    engine.copy_prefix("first", "second", SHARED)
    engine.forward("second", SECOND[SHARED:])  # overwrites positions SHARED.. in its copy
    after_source = engine.forward("first", np.array([9], dtype=np.int32))

    alone = engine_factory.whole(tiny_weights)
    alone.forward("first", PROMPT)
    np.testing.assert_array_equal(after_source, alone.forward("first", np.array([9], np.int32)))
    assert engine.cache_length("first") == len(PROMPT) + 1
    assert engine.cache_length("second") == len(SECOND)
    engine.release("first")  # the copy outlives its source
    engine_factory.assert_close(
        engine.forward("second", np.array([3], np.int32)),
        alone.forward("again", np.concatenate([SECOND, [3]]).astype(np.int32)),
    )


def test_bad_copies_are_refused(engine_factory: EngineFactory, tiny_weights: WeightsFor) -> None:
    engine = engine_factory.whole(tiny_weights)
    engine.forward("first", PROMPT)
    engine.forward("busy", PROMPT[:2])
    with pytest.raises(EngineError, match="holds"):
        engine.copy_prefix("first", "second", len(PROMPT) + 1)
    with pytest.raises(EngineError, match="holds 0"):
        engine.copy_prefix("unknown", "second", 1)
    with pytest.raises(EngineError, match="already"):
        engine.copy_prefix("first", "busy", 2)
    assert engine.cache_length("second") == 0 and engine.active_requests() == 2


def test_bytes_per_position(engine_factory: EngineFactory, tiny_weights: WeightsFor) -> None:
    engine = engine_factory.whole(tiny_weights)
    per_layer = 2 * TINY.num_kv_heads * TINY.head_dim * 4
    assert engine.cache_bytes_per_position() == TINY.num_layers * per_layer
