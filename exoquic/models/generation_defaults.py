"""The sampling a model's authors recommend, used where a request says nothing.

A registry entry carries its own; a Hugging Face directory may hold a
`generation_config.json`, read the way `transformers` reads it: without
`do_sample: true` a model generates greedily, whatever temperature it names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GENERATION_CONFIG_FILE = "generation_config.json"
# A reply stops here unless the request asks for more: long enough for any chat
# answer, short enough that a model which never says its end token stops.
DEFAULT_MAX_TOKENS = 1024


@dataclass(frozen=True)
class GenerationDefaults:
    """temperature 0 is greedy; top_k 0 means no limit; max_tokens is finite."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = DEFAULT_MAX_TOKENS

    def __post_init__(self) -> None:
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"temperature {self.temperature} is not between 0 and 2")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p {self.top_p} is not in (0, 1]")
        if self.top_k < 0 or self.max_tokens < 1:
            raise ValueError("top_k must be >= 0 and max_tokens >= 1")

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (`defaults` in `GET /v1/models` entries)."""
        return asdict(self)


# For models without recommendations: greedy, which small models answer best with.
FALLBACK_DEFAULTS = GenerationDefaults()


def from_generation_config(
    config: Mapping[str, Any], fallback: GenerationDefaults = FALLBACK_DEFAULTS
) -> GenerationDefaults:
    """Defaults from a parsed `generation_config.json`; what it lacks, or gives out
    of range, comes from `fallback`. Raises nothing: a model runs without them."""
    max_tokens = _get(config, "max_new_tokens", int, 0)
    max_tokens = max_tokens if max_tokens >= 1 else fallback.max_tokens
    if config.get("do_sample") is not True:
        return GenerationDefaults(max_tokens=max_tokens)
    try:
        return GenerationDefaults(
            # transformers' own defaults where the file names no value
            temperature=_get(config, "temperature", float, 1.0),
            top_p=_get(config, "top_p", float, 1.0),
            top_k=_get(config, "top_k", int, 50),
            max_tokens=max_tokens,
        )
    except ValueError:  # out of range
        return fallback


def read_generation_config(
    directory: Path, fallback: GenerationDefaults = FALLBACK_DEFAULTS
) -> GenerationDefaults:
    """Defaults from `directory`'s generation_config.json, or `fallback` without a usable one."""
    try:
        config = json.loads((directory / GENERATION_CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return fallback
    return from_generation_config(config, fallback) if isinstance(config, dict) else fallback


def _get(config: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    if kind is int and value != int(value):
        return default
    return kind(value)
