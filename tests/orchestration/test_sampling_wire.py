"""`Forward.sampling`: SamplingParams as one map, checked by the last shard (pure logic)."""

from __future__ import annotations

from typing import Any

import pytest

from exoquic.engines.constraints import MAX_GRAMMAR_CHARS
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
        SamplingParams(
            temperature=0.7,
            min_p=0.05,
            presence_penalty=-0.5,
            frequency_penalty=1.0,
            repetition_penalty=1.1,
            logit_bias=((5, -100.0), (9, 2.5)),
            grammar='{"grammars": []}',
        ),
    ],
)
def test_sampling_parameters_round_trip(params: SamplingParams) -> None:
    assert sampling_from_wire(sampling_to_wire(params)) == params


def test_only_parameters_other_than_the_defaults_travel() -> None:
    assert sampling_to_wire(SamplingParams()) == {}
    assert sampling_to_wire(SamplingParams(top_k=5)) == {"top_k": 5}


def test_logit_bias_travels_as_pairs_and_comes_back_as_a_tuple() -> None:
    wire = sampling_to_wire(SamplingParams(logit_bias=((3, -1.0),)))
    assert wire == {"logit_bias": [[3, -1.0]]}  # CBOR here refuses integer map keys
    assert sampling_from_wire({"logit_bias": [[3, -1]]}).logit_bias == ((3, -1.0),)


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
        ({"mirostat": 0.1}, r"unknown sampling parameters \['mirostat'\]"),
        ({"min_p": 1.5}, "min_p"),
        ({"presence_penalty": -2.5}, "presence_penalty"),
        ({"frequency_penalty": 3}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"logit_bias": [[1, 101]]}, "logit_bias"),
        ({"logit_bias": [[-1, 1]]}, "logit_bias"),
        ({"logit_bias": [[1, 2, 3]]}, "logit_bias"),
        ({"logit_bias": [[1, True]]}, "logit_bias"),
        ({"logit_bias": [[1.5, 1]]}, "logit_bias"),
        ({"logit_bias": {"1": 2}}, "logit_bias"),
        ({"logit_bias": [[1, 1]] * 1025}, "logit_bias"),
        ({"grammar": ""}, "grammar"),
        ({"grammar": 5}, "grammar"),
        ({"grammar": "x" * (MAX_GRAMMAR_CHARS + 1)}, "grammar"),
    ],
)
def test_bad_sampling_parameters_are_refused(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(BadSamplingError, match=match):
        sampling_from_wire(fields)
