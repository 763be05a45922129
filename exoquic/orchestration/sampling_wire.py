"""A request's sampling parameters as `Forward.sampling` carries them.

On the wire they are one map of `SamplingParams` fields by name, so that a new
optional parameter (a field with a default) travels without a new message or
field. `wire/` checks only the map's size; the last shard validates it here,
and a node that does not know a parameter refuses the request rather than
sample without it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from exoquic.engines.sampling import SamplingParams

_DEFAULTS = SamplingParams()
_FIELDS = {f.name: f for f in dataclasses.fields(SamplingParams)}


class BadSamplingError(ValueError):
    """`Forward.sampling` does not describe valid sampling parameters."""


def sampling_to_wire(params: SamplingParams) -> dict[str, Any]:
    """The parameters that differ from the defaults (a greedy request sends `{}`)."""
    return {
        name: getattr(params, name)
        for name in _FIELDS
        if getattr(params, name) != getattr(_DEFAULTS, name)
    }


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
