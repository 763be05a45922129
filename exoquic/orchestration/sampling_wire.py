"""A request's sampling parameters as `Forward.sampling` carries them.

On the wire they are one map of `SamplingParams` fields by name, so that a new
optional parameter (a field with a default) travels without a new message or
field. `wire/` checks only the map's size; the last shard validates it here,
and a node that does not know a parameter refuses the request rather than
sample without it.

CBOR here refuses non-text map keys, so `logit_bias` travels as a list of
[token id, bias] pairs; `grammar` (an llguidance grammar, JSON text) travels
whole, at most `MAX_GRAMMAR_CHARS` characters.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from exoquic.engines.constraints import MAX_GRAMMAR_CHARS
from exoquic.engines.sampling import SamplingParams

_DEFAULTS = SamplingParams()
_FIELDS = {f.name: f for f in dataclasses.fields(SamplingParams)}
MAX_LOGIT_BIAS = 1024  # pairs; the API allows as many


class BadSamplingError(ValueError):
    """`Forward.sampling` does not describe valid sampling parameters."""


def sampling_to_wire(params: SamplingParams) -> dict[str, Any]:
    """The parameters that differ from the defaults (a greedy request sends `{}`)."""
    fields = {
        name: getattr(params, name)
        for name in _FIELDS
        if getattr(params, name) != getattr(_DEFAULTS, name)
    }
    if "logit_bias" in fields:  # as decoding gives it back, for a local ring too
        fields["logit_bias"] = [[token, bias] for token, bias in params.logit_bias]
    return fields


def sampling_from_wire(fields: dict[str, Any]) -> SamplingParams:
    """`SamplingParams` from a `Forward.sampling` map; BadSamplingError if invalid."""
    unknown = sorted(fields.keys() - _FIELDS.keys())
    if unknown:
        raise BadSamplingError(f"unknown sampling parameters {unknown}")
    for name, value in fields.items():
        if not _plausible(getattr(_DEFAULTS, name), value):
            raise BadSamplingError(f"sampling parameter {name!r} has the wrong type: {value!r}")
    seed = fields.get("seed")
    if seed is not None and not (isinstance(seed, int) and 0 <= seed < 1 << 64):
        raise BadSamplingError(f"the seed must be an integer in 0..2**64-1, not {seed!r}")
    fields = dict(fields)
    if "logit_bias" in fields:
        fields["logit_bias"] = _logit_bias(fields["logit_bias"])
    grammar = fields.get("grammar")
    if grammar is not None and not (
        isinstance(grammar, str) and 0 < len(grammar) <= MAX_GRAMMAR_CHARS
    ):
        raise BadSamplingError(f"the grammar must be text of 1..{MAX_GRAMMAR_CHARS} characters")
    try:
        return SamplingParams(**fields)  # its __post_init__ checks the ranges
    except (TypeError, ValueError) as exc:
        raise BadSamplingError(f"bad sampling parameters: {exc}") from exc


def _plausible(default: object, value: object) -> bool:
    """An integer where the default is one, a finite number where it is a float
    (bools are neither); other fields are left to SamplingParams' own checks."""
    if isinstance(value, bool) or isinstance(default, bool):
        return type(value) is type(default)
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, float):
        return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
    return True


def _logit_bias(pairs: object) -> tuple[tuple[int, float], ...]:
    """`logit_bias` from its [token id, bias] pairs (SamplingParams checks the ranges)."""
    if not isinstance(pairs, list | tuple) or len(pairs) > MAX_LOGIT_BIAS:
        raise BadSamplingError(f"logit_bias must be a list of at most {MAX_LOGIT_BIAS} pairs")
    bias: list[tuple[int, float]] = []
    for pair in pairs:
        if not (
            isinstance(pair, list | tuple)
            and len(pair) == 2
            and _plausible(0, pair[0])
            and _plausible(0.0, pair[1])
        ):
            raise BadSamplingError(f"logit_bias pairs are [token id, bias], not {pair!r}")
        bias.append((pair[0], float(pair[1])))
    return tuple(bias)
