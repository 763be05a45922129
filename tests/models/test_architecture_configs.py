"""Model families: what each reads from config.json and GGUF, and how its tensors are named."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from fixtures.tiny_hf import FAMILIES, random_weights, write_tiny_model
from safetensors.numpy import save_file

from exoquic.models import architectures
from exoquic.models.architectures import UnsupportedArchitectureError
from exoquic.models.config import ModelConfig
from exoquic.models.errors import ModelLoadError
from exoquic.models.gguf_file import GGUFFile
from exoquic.models.gguf_loader import gguf_tensor_name, load_gguf_shard, read_gguf_config
from exoquic.models.hf_loader import load_hf_shard, read_hf_config
from exoquic.models.rope import inverse_frequencies
from exoquic.models.shard import Shard
from exoquic.models.weights import shard_tensor_names

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import hf_to_gguf

FEATURES = {  # family fixture -> (architecture, attention_bias, qk_norm)
    "llama3": ("llama", False, False),
    "llama-tied": ("llama", False, False),
    "mistral": ("llama", False, False),
    "qwen2": ("qwen2", True, False),
    "qwen3": ("qwen3", False, True),
    "phi3": ("phi3", False, False),
    "gemma2": ("gemma2", False, False),
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_config_json_sets_each_family_s_features(family: str) -> None:
    c = ModelConfig.from_hf_dict(FAMILIES[family])
    assert (c.architecture, c.attention_bias, c.qk_norm) == FEATURES[family]


def test_qwen3_keeps_a_head_dim_unrelated_to_the_hidden_size() -> None:
    c = ModelConfig.from_hf_dict(FAMILIES["qwen3"])
    assert (c.head_dim, c.num_heads * c.head_dim, c.hidden_size) == (32, 128, 64)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_gguf_copy_has_the_config_of_the_safetensors_copy(family: str, tmp_path: Path) -> None:
    model_dir = write_tiny_model(family, tmp_path / "hf")
    hf_to_gguf.convert(model_dir, tmp_path / "model.gguf")
    from_gguf, from_hf = read_gguf_config(tmp_path / "model.gguf"), read_hf_config(model_dir)
    assert from_gguf == replace(from_hf, rope_scaling=from_gguf.rope_scaling)
    # Llama 3 scaling arrives as parameters from config.json, as rope_freqs from GGUF;
    # phi3's longrope factors as float32 tensors.
    assert (from_gguf.rope_scaling is not None) == (family in ("llama3", "phi3"))
    for context in (16, 64):  # phi3's original context is 32: both factor sets
        gguf_rope, hf_rope = (
            inverse_frequencies(c.head_dim, c.rope_theta, c.rope_scaling, context)
            for c in (from_gguf, from_hf)
        )
        np.testing.assert_allclose(
            gguf_rope,
            hf_rope,
            rtol=1e-6,
        )


def test_sliding_window_caps_the_context() -> None:
    mistral_v01 = FAMILIES["mistral"] | {"sliding_window": 4096, "max_position_embeddings": 32768}
    assert ModelConfig.from_hf_dict(mistral_v01).max_context == 4096
    assert ModelConfig.from_hf_dict(FAMILIES["mistral"]).max_context == 512  # window None
    # Qwen2.5 names a window but does not use it.
    assert ModelConfig.from_hf_dict(FAMILIES["qwen2"]).max_context == 512


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"model_type": "gpt2"}, "unsupported model_type 'gpt2'"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"model_type": "mixtral", "num_local_experts": 8}, "unsupported model_type 'mixtral'"),
        ({"num_local_experts": 8}, "mixture-of-experts models \\(8 experts\\)"),
    ],
)
def test_unsupported_families_and_features_are_refused(
    change: dict[str, Any], words: str, tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(FAMILIES["llama-tied"] | change))
    with pytest.raises(ModelLoadError, match=words):
        read_hf_config(tmp_path)


def test_a_mixture_of_experts_gguf_filed_as_llama_is_refused(tmp_path: Path) -> None:
    # llama.cpp files Mixtral as `llama` with an expert count: not a dense llama.
    path = tmp_path / "mixtral.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_expert_count(8)
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="mixture-of-experts models \\(8 experts\\)"):
        read_gguf_config(path)


def test_unknown_gguf_architecture_is_refused() -> None:
    known = r"gemma2, llama, phi3, qwen2, qwen3"
    with pytest.raises(UnsupportedArchitectureError, match=rf"'gpt2'.*{known}"):
        architectures.for_gguf_arch("gpt2")


def test_each_feature_adds_its_layer_tensors() -> None:
    shard = Shard("m", 1, 1, 3)
    llama = set(shard_tensor_names(shard, ModelConfig.from_hf_dict(FAMILIES["llama3"])))
    qwen2 = set(shard_tensor_names(shard, ModelConfig.from_hf_dict(FAMILIES["qwen2"])))
    qwen3 = set(shard_tensor_names(shard, ModelConfig.from_hf_dict(FAMILIES["qwen3"])))
    assert qwen2 - llama == {f"model.layers.1.self_attn.{p}_proj.bias" for p in "qkv"}
    assert qwen3 - llama == {f"model.layers.1.self_attn.{p}_norm.weight" for p in "qk"}


@pytest.mark.parametrize("family", ["llama-tied", "qwen2", "qwen3", "phi3", "gemma2"])
def test_gguf_names_are_llama_cpp_s(family: str, tmp_path: Path) -> None:
    """Every tensor the loader asks for is in a file named by the `gguf` package's own map."""
    model_dir = write_tiny_model(family, tmp_path / "hf")
    hf_to_gguf.convert(model_dir, tmp_path / "model.gguf")
    config = read_hf_config(model_dir)
    arch = architectures.by_name(config.architecture)
    in_file = set(GGUFFile.open(tmp_path / "model.gguf").tensors)
    wanted = {
        gguf_tensor_name(n, config.tie_word_embeddings, arch)
        for n in shard_tensor_names(Shard.whole("m", config.num_layers), config)
    }
    # Scaling tensors (phi3's rope factors) are read into the config, not the weights.
    assert wanted == in_file - {"rope_factors_long.weight", "rope_factors_short.weight"}


def test_permuted_llama_q_k_biases_come_back_in_hugging_face_order(tmp_path: Path) -> None:
    """A llama with attention biases: llama.cpp permutes q/k biases with their weights."""
    config = FAMILIES["llama-tied"] | {"attention_bias": True}
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(config))
    save_file(random_weights(config, seed=0), str(hf / "model.safetensors"))
    hf_to_gguf.convert(hf, tmp_path / "model.gguf")
    assert read_gguf_config(tmp_path / "model.gguf").attention_bias
    shard = Shard.whole("m", config["num_hidden_layers"])
    from_gguf, from_hf = load_gguf_shard(tmp_path / "model.gguf", shard), load_hf_shard(hf, shard)
    assert "model.layers.0.self_attn.k_proj.bias" in from_hf.tensors
    assert from_gguf.tensors.keys() == from_hf.tensors.keys()
    for name in from_hf.tensors:
        np.testing.assert_array_equal(from_gguf.dense(name), from_hf.dense(name), err_msg=name)
