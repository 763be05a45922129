"""Strict checks for values that arrive from the network (capabilities, plans).

Every check raises ValueError naming the field, so a peer's bad message is
reported precisely and never half-accepted.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any

MAX_TEXT = 256
MAX_BYTES = 2**60  # an exbibyte: more memory than any device has


def check_map(value: object, what: str, keys: Set[str]) -> dict[str, Any]:
    """`value` as a dict holding exactly `keys`."""
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a map, got {type(value).__name__}")
    missing = sorted(keys - value.keys())
    unknown = sorted(map(repr, value.keys() - keys))
    if missing or unknown:
        raise ValueError(f"{what}: missing keys {missing}, unknown keys {unknown}")
    return value


def check_int(value: object, what: str, lo: int, hi: int) -> int:
    # bool is a subclass of int; True must not pass as a layer index.
    if type(value) is not int:
        raise ValueError(f"{what} must be an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{what} must be in {lo}..{hi}, got {value}")
    return value


def check_text(value: object, what: str, max_len: int = MAX_TEXT) -> str:
    if type(value) is not str:
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    if not 0 < len(value) <= max_len:
        raise ValueError(f"{what} must have 1..{max_len} characters, got {len(value)}")
    return value
