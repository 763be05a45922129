"""`Forward.sampling`: SamplingParams as one map, checked by the last shard (pure logic)."""

from __future__ import annotations

from typing import Any

import pytest

from exoquic.engines.sampling import SamplingParams
from exoquic.orchestration.sampling_wire import (
    BadSamplingError,
    sampling_from_wire,
    sampling_to_wire,
)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(),
        SamplingParams(temperature=0.7, top_p=0.9, top_k=40, seed=1234),
        SamplingParams(temperature=2.0, seed=2**64 - 1),
    ],
)
def test_sampling_parameters_round_trip(params: SamplingParams) -> None:
    assert sampling_from_wire(sampling_to_wire(params)) == params


def test_only_parameters_other_than_the_defaults_travel() -> None:
    assert sampling_to_wire(SamplingParams()) == {}
    assert sampling_to_wire(SamplingParams(top_k=5)) == {"top_k": 5}


def test_integer_sampling_values_are_fine_for_real_parameters() -> None:
    params = sampling_from_wire({"temperature": 1, "top_p": 1})
    assert params.temperature == 1.0 and params.top_p == 1.0


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        # float(10**400) and math.isfinite(10**400) raise OverflowError.
        ({"temperature": 10**400}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"top_k": 2.5}, "top_k"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"seed": True}, "seed"),
        ({"min_p": 0.1}, r"unknown sampling parameters \['min_p'\]"),
    ],
)
def test_bad_sampling_parameters_are_refused(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(BadSamplingError, match=match):
        sampling_from_wire(fields)
