"""Phi-3's longrope scaling read from config.json and GGUF metadata."""

from __future__ import annotations

import math

import numpy as np
import pytest

from exoquic.models.config import ModelConfig
from exoquic.models.longrope import LongRopeScaling, longrope_from_gguf, longrope_from_hf

SHORT = [1.0, 1.25, 1.5, 2.0]  # exact in float32, as GGUF stores them
LONG = [1.0, 2.0, 4.0, 8.0]
# Phi-3.5-mini-instruct's config.json, with 4 factors instead of 48.
PHI35 = {
    "max_position_embeddings": 131072,
    "original_max_position_embeddings": 4096,
    "rope_scaling": {"type": "longrope", "short_factor": SHORT, "long_factor": LONG},
}


def test_phi35_attention_factor_is_the_published_one() -> None:
    scaling = longrope_from_hf(PHI35["rope_scaling"], PHI35)
    # sqrt(1 + ln(131072 / 4096) / ln(4096)), as transformers and llama.cpp compute it.
    assert scaling.attention_factor == pytest.approx(1.1902380714238083, abs=1e-12)
    assert scaling.original_max_position_embeddings == 4096


def test_factor_set_follows_the_context_served() -> None:
    scaling = longrope_from_hf(PHI35["rope_scaling"], PHI35)
    assert scaling.factors_for(4096) == tuple(SHORT)
    assert scaling.factors_for(4097) == tuple(LONG)


def test_explicit_attention_factor_and_no_stretch() -> None:
    raw = {**PHI35["rope_scaling"], "attention_factor": 1.5}
    assert longrope_from_hf(raw, PHI35).attention_factor == 1.5
    same = {**PHI35, "max_position_embeddings": 4096}
    assert longrope_from_hf(PHI35["rope_scaling"], same).attention_factor == 1.0


def test_gguf_metadata_and_factor_tensors() -> None:
    metadata = {
        "phi3.context_length": 131072,
        "phi3.rope.scaling.original_context_length": 4096,
        "phi3.rope.scaling.attn_factor": 1.19,
    }
    short, long = np.array(SHORT, np.float32), np.array(LONG, np.float32)
    scaling = longrope_from_gguf(metadata, "phi3", short, long)
    assert scaling == LongRopeScaling(tuple(SHORT), tuple(LONG), 4096, 1.19)
    del metadata["phi3.rope.scaling.attn_factor"]
    expected = math.sqrt(1 + math.log(32) / math.log(4096))
    assert longrope_from_gguf(metadata, "phi3", short, long).attention_factor == expected


@pytest.mark.parametrize(
    "raw",
    [
        {"short_factor": SHORT, "long_factor": LONG[:3]},
        {"short_factor": [1.0, 0.0, 1.0, 1.0], "long_factor": LONG},
        {"short_factor": [], "long_factor": []},
        {"short_factor": SHORT, "long_factor": LONG, "attention_factor": -1},
    ],
    ids=["lengths", "zero", "empty", "attention"],
)
def test_bad_factors_are_refused(raw: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="longrope"):
        longrope_from_hf(raw, PHI35)


def test_missing_factor_list_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        longrope_from_hf({"short_factor": SHORT}, PHI35)


@pytest.mark.parametrize("rope_type", ["longrope", "su"])
def test_phi3_config_json_reads_longrope_under_either_name(rope_type: str) -> None:
    config = {
        "model_type": "phi3",
        "vocab_size": 32064,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        **PHI35,
        "rope_scaling": {"type": rope_type, "short_factor": [1.0] * 48, "long_factor": [2.0] * 48},
    }
    c = ModelConfig.from_hf_dict(config)
    assert c.architecture == "phi3" and c.fused_projections
    assert isinstance(c.rope_scaling, LongRopeScaling)
    assert c.rope_scaling.factors_for(131072) == (2.0,) * 48
    # head_dim 96 needs 48 factors: a config with another count is refused.
    config["rope_scaling"] = {"type": rope_type, "short_factor": SHORT, "long_factor": LONG}
    with pytest.raises(ValueError, match="48 factors"):
        ModelConfig.from_hf_dict(config)
