"""Recommended sampling: from the registry, or a generation_config.json read as
transformers reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exoquic.models.generation_defaults import (
    DEFAULT_MAX_TOKENS,
    FALLBACK_DEFAULTS,
    GenerationDefaults,
    from_generation_config,
    read_generation_config,
)
from exoquic.models.registry import DEFAULT_MODEL_ID, get_model, list_models
from exoquic.models.source import ModelSource, resolve_source


def test_sampling_config_is_taken_with_transformers_defaults_for_what_it_omits() -> None:
    config = {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "max_new_tokens": 300}
    assert from_generation_config(config) == GenerationDefaults(0.6, 0.9, 50, 300)
    assert from_generation_config({"do_sample": True}) == GenerationDefaults(1.0, 1.0, 50)


def test_without_do_sample_a_model_is_greedy_whatever_temperature_it_names() -> None:
    got = from_generation_config({"temperature": 0.9, "top_p": 0.5, "eos_token_id": 2})
    assert got == GenerationDefaults(temperature=0.0, max_tokens=DEFAULT_MAX_TOKENS)


@pytest.mark.parametrize(
    "config",
    [
        {"do_sample": True, "temperature": 7},
        {"do_sample": True, "top_p": 0},
        {"do_sample": True, "top_k": -1},
    ],
)
def test_out_of_range_values_fall_back(config: dict[str, object]) -> None:
    fallback = GenerationDefaults(temperature=0.4)
    assert from_generation_config(config, fallback) == fallback


@pytest.mark.parametrize(
    "config",
    [
        {"do_sample": True, "temperature": "hot", "top_k": 2.5, "max_new_tokens": True},
        {"do_sample": "yes", "temperature": 0.5},
    ],
)
def test_values_of_the_wrong_type_are_ignored(config: dict[str, object]) -> None:
    got = from_generation_config(config)
    assert got.max_tokens == DEFAULT_MAX_TOKENS
    assert got.top_k in (0, 50) and got.temperature in (0.0, 1.0)


def test_a_directory_without_a_usable_file_gets_the_fallback(tmp_path: Path) -> None:
    assert read_generation_config(tmp_path) == FALLBACK_DEFAULTS
    (tmp_path / "generation_config.json").write_text("{not json")
    assert read_generation_config(tmp_path) == FALLBACK_DEFAULTS
    (tmp_path / "generation_config.json").write_text("[1, 2]")
    assert read_generation_config(tmp_path) == FALLBACK_DEFAULTS
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "temperature": 0.7})
    )
    assert read_generation_config(tmp_path).temperature == 0.7


def test_every_registry_entry_has_finite_valid_defaults() -> None:
    for entry in list_models():
        assert 1 <= entry.defaults.max_tokens <= 4096
        assert 0.0 <= entry.defaults.temperature <= 1.0


def test_the_bundled_model_answers_greedily_by_default() -> None:
    # At temperature 0.7, and even at 0.2 / top_p 0.9, it answers nonsense (see registry).
    assert get_model(DEFAULT_MODEL_ID).defaults.temperature == 0.0
    assert resolve_source(DEFAULT_MODEL_ID).load_generation_defaults().temperature == 0.0


def test_a_hugging_face_directory_outside_the_registry_uses_its_file(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"do_sample": True, "temperature": 0.6, "top_p": 0.95})
    )
    source = ModelSource("my-own-model", "hf", tmp_path)
    assert source.load_generation_defaults() == GenerationDefaults(0.6, 0.95, 50)
    # A registry model's own defaults win over the repository's file.
    registered = ModelSource("smollm2-360m-instruct", "hf", tmp_path)
    assert registered.load_generation_defaults() == get_model("smollm2-360m-instruct").defaults
