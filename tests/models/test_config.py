"""ModelConfig from Hugging Face config.json and GGUF metadata: RoPE scaling above all."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from models.tiny_gguf import finish, tiny_llama_writer

from exoquic.models.config import (
    LinearRopeScaling,
    Llama3RopeScaling,
    ModelConfig,
    RopeFrequencyFactors,
    UnsupportedRopeScalingError,
    rope_scaling_from_gguf,
)
from exoquic.models.errors import ModelLoadError
from exoquic.models.gguf_loader import read_gguf_config
from exoquic.models.hf_loader import read_hf_config

# meta-llama/Llama-3.2-1B-Instruct's config.json, as published.
LLAMA_3_2_1B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}
LLAMA3_SCALING = Llama3RopeScaling(
    factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
)


def with_scaling(rope_scaling: Any) -> dict[str, Any]:
    return {**LLAMA_3_2_1B, "rope_scaling": rope_scaling}


def test_llama_3_2_config_json() -> None:
    c = ModelConfig.from_hf_dict(LLAMA_3_2_1B)
    assert (c.num_layers, c.hidden_size, c.intermediate_size) == (16, 2048, 8192)
    assert (c.num_heads, c.num_kv_heads, c.head_dim) == (32, 8, 64)
    assert (c.vocab_size, c.rope_theta, c.tie_word_embeddings) == (128256, 500000.0, True)
    assert c.rope_scaling == LLAMA3_SCALING


@pytest.mark.parametrize(
    "rope_scaling",
    [None, {"rope_type": "default"}, {"type": "default"}],
    ids=["absent", "rope_type-default", "type-default"],
)
def test_no_scaling(rope_scaling: Any) -> None:
    d = with_scaling(rope_scaling)
    if rope_scaling is None:
        del d["rope_scaling"]
    assert ModelConfig.from_hf_dict(d).rope_scaling is None


def test_linear_in_old_and_new_spelling() -> None:
    for key in ("type", "rope_type"):
        c = ModelConfig.from_hf_dict(with_scaling({key: "linear", "factor": 2.0}))
        assert c.rope_scaling == LinearRopeScaling(2.0)


def test_transformers_5_rope_parameters() -> None:
    d = dict(LLAMA_3_2_1B)
    d["rope_parameters"] = {**d.pop("rope_scaling"), "rope_theta": d.pop("rope_theta")}
    c = ModelConfig.from_hf_dict(d)
    assert c.rope_theta == 500000.0 and c.rope_scaling == LLAMA3_SCALING


# longrope / su (Phi-3) are read: tests/models/test_longrope.py.
@pytest.mark.parametrize("rope_type", ["yarn", "dynamic"])
def test_unknown_types_are_refused_by_name(rope_type: str) -> None:
    d = with_scaling({"rope_type": rope_type, "factor": 4.0})
    with pytest.raises(UnsupportedRopeScalingError, match=f"'{rope_type}'"):
        ModelConfig.from_hf_dict(d)


def test_hf_directory_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(with_scaling({"type": "yarn", "factor": 4})))
    with pytest.raises(ModelLoadError, match=r"config\.json: .*RoPE scaling type 'yarn'"):
        read_hf_config(tmp_path)
    incomplete = {k: v for k, v in LLAMA_3_2_1B["rope_scaling"].items() if k != "low_freq_factor"}
    (tmp_path / "config.json").write_text(json.dumps(with_scaling(incomplete)))
    with pytest.raises(ModelLoadError, match="missing key 'low_freq_factor'"):
        read_hf_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_3_2_1B))
    assert read_hf_config(tmp_path).rope_scaling == LLAMA3_SCALING


@pytest.mark.parametrize(
    "bad",
    [
        {"rope_type": "llama3", **{**LLAMA_3_2_1B["rope_scaling"], "high_freq_factor": 1.0}},
        {"rope_type": "linear", "factor": 0},
        "llama3",
    ],
    ids=["equal-band-edges", "zero-factor", "not-an-object"],
)
def test_invalid_parameters(bad: Any) -> None:
    with pytest.raises(ValueError):
        ModelConfig.from_hf_dict(with_scaling(bad))


# --- GGUF -------------------------------------------------------------------


def write_gguf(path: Path, rope_freqs: np.ndarray | None = None, **rope: Any) -> Path:
    """A llama GGUF header with head_dim 16 and the given rope keys / rope_freqs tensor."""
    writer = tiny_llama_writer(path, rope_freq_base=500000.0)
    if "type" in rope:
        writer.add_rope_scaling_type(rope["type"])
    if "factor" in rope:
        writer.add_rope_scaling_factor(rope["factor"])
    writer.add_tensor("token_embd.weight", np.zeros((16, 64), np.float32))
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", rope_freqs.astype(np.float32))
    finish(writer)
    return path


def test_gguf_without_scaling(tmp_path: Path, smollm2_gguf_path: Path) -> None:
    assert read_gguf_config(write_gguf(tmp_path / "plain.gguf")).rope_scaling is None
    assert read_gguf_config(smollm2_gguf_path).rope_scaling is None


def test_gguf_rope_freqs_tensor(tmp_path: Path) -> None:
    factors = np.array([1, 1, 1, 1.5, 4, 16, 32, 32], np.float32)
    c = read_gguf_config(write_gguf(tmp_path / "llama3.gguf", rope_freqs=factors))
    assert c.rope_theta == 500000.0
    assert c.rope_scaling == RopeFrequencyFactors((1, 1, 1, 1.5, 4, 16, 32, 32))


def test_gguf_linear_keys(tmp_path: Path) -> None:
    linear = gguf.RopeScalingType.LINEAR
    c = read_gguf_config(write_gguf(tmp_path / "linear.gguf", type=linear, factor=4.0))
    assert c.rope_scaling == LinearRopeScaling(4.0)


def test_gguf_yarn_is_refused_by_name(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "yarn.gguf", type=gguf.RopeScalingType.YARN, factor=4.0)
    with pytest.raises(ModelLoadError, match=r"yarn\.gguf: .*RoPE scaling type 'yarn'"):
        read_gguf_config(path)


def test_gguf_rope_freqs_of_the_wrong_length(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "short.gguf", rope_freqs=np.ones(4, np.float32))
    with pytest.raises(ModelLoadError, match=r"rope_freqs\.weight must hold 8 positive values"):
        read_gguf_config(path)


def test_gguf_metadata_rules() -> None:
    factors = np.array([1.0, 2.0])
    assert rope_scaling_from_gguf({}, "llama", 4, None) is None
    assert rope_scaling_from_gguf({"llama.rope.scaling.type": "none"}, "llama", 4, None) is None
    # A bare factor is linear scaling, as llama.cpp reads it.
    bare = {"llama.rope.scaling.factor": 2.0}
    assert rope_scaling_from_gguf(bare, "llama", 4, None) == LinearRopeScaling(2.0)
    # Linear scaling on top of per-frequency factors multiplies the divisors.
    linear = {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 2.0}
    assert rope_scaling_from_gguf(linear, "llama", 4, factors) == RopeFrequencyFactors((2.0, 4.0))
    with pytest.raises(UnsupportedRopeScalingError, match="'longrope'"):
        rope_scaling_from_gguf({"llama.rope.scaling.type": "longrope"}, "llama", 4, None)
