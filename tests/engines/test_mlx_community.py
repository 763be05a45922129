"""mlx-community checkpoints (MLX affine 4- and 8-bit, groups of 64): loaded as they are,
run natively on MLX and by exact conversion on tinygrad, checked against MLX's own
`mx.dequantize` of the same file and a float64 reference forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from engines.engine_factories import FACTORIES, PROMPT, WHOLE, run_chain
from engines.reference import reference_forward
from engines.tiny_model import TINY, random_tensors

from exoquic.models.affine import AffineTensor
from exoquic.models.errors import ModelLoadError
from exoquic.models.hf_loader import load_hf_shard
from exoquic.models.shard import Shard
from exoquic.models.weights import HEAD_NAME, ShardWeights

HF_CONFIG = {
    "model_type": "llama",
    "vocab_size": TINY.vocab_size,
    "hidden_size": TINY.hidden_size,
    "intermediate_size": TINY.intermediate_size,
    "num_hidden_layers": TINY.num_layers,
    "num_attention_heads": TINY.num_heads,
    "num_key_value_heads": TINY.num_kv_heads,
    "rope_theta": TINY.rope_theta,
    "rms_norm_eps": TINY.rms_norm_eps,
    "max_position_embeddings": TINY.max_context,
    "tie_word_embeddings": True,
}
# mlx-lm's default (4 bits, groups of 64), with per-module overrides as mlx-lm writes
# them for mixed recipes: one matrix in 8 bits, one in groups of 32.
QUANTIZATION = {
    "group_size": 64,
    "bits": 4,
    "model.layers.1.mlp.down_proj": {"group_size": 64, "bits": 8},
    "model.layers.2.self_attn.q_proj": {"group_size": 32, "bits": 4},
}
EIGHT_BIT = {"group_size": 64, "bits": 8}


def write_mlx_community(root: Path, quantization: dict[str, object]) -> dict[str, np.ndarray]:
    """A tiny llama as mlx-lm's `convert -q` writes it; returns MLX's dequantized weights."""
    expected: dict[str, np.ndarray] = {}
    stored: dict[str, mx.array] = {}
    for name, dense in random_tensors(TINY).items():
        if name == HEAD_NAME:
            continue  # tied: mlx-community files have no head either
        values = mx.array(np.asarray(dense)).astype(mx.bfloat16)
        if values.ndim == 1:
            stored[name] = values
            expected[name] = np.array(values.astype(mx.float32))
            continue
        module = name.removesuffix(".weight")
        settings = quantization.get(module, quantization)
        assert isinstance(settings, dict)
        bits, group = int(settings["bits"]), int(settings["group_size"])
        weight, scales, biases = mx.quantize(values, group_size=group, bits=bits)
        stored[name], stored[f"{module}.scales"], stored[f"{module}.biases"] = (
            weight,
            scales,
            biases,
        )
        # In float32: the values the 16-bit scales and biases define, without bf16 rounding.
        wide = [scales.astype(mx.float32), biases.astype(mx.float32)]
        expected[name] = np.array(mx.dequantize(weight, *wide, group_size=group, bits=bits))
    mx.save_safetensors(str(root / "model.safetensors"), stored)
    config = {**HF_CONFIG, "quantization": quantization}
    (root / "config.json").write_text(json.dumps(config))
    return expected


@pytest.fixture(scope="module", params=[QUANTIZATION, EIGHT_BIT], ids=["4-bit-mixed", "8-bit"])
def mlx_community(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("mlx-community")
    return root, write_mlx_community(root, request.param)


def test_matrices_stay_quantized_and_dequantize_like_mlx(
    mlx_community: tuple[Path, dict[str, np.ndarray]],
) -> None:
    root, expected = mlx_community
    weights = load_hf_shard(root, WHOLE, weights="q8_0")  # already quantized: kept as is
    for name, tensor in weights.tensors.items():
        if name == HEAD_NAME:
            assert tensor is weights.tensors["model.embed_tokens.weight"]
            continue
        if expected[name].ndim == 2:
            assert isinstance(tensor, AffineTensor), name
        np.testing.assert_array_equal(weights.dense(name), expected[name], err_msg=name)


@pytest.mark.parametrize("engine", ["mlx", "tinygrad"])
def test_engines_match_the_reference_whole_and_split(
    engine: str, mlx_community: tuple[Path, dict[str, np.ndarray]]
) -> None:
    root, expected = mlx_community
    factory = FACTORIES[engine]
    reference = reference_forward(
        ShardWeights(TINY, WHOLE, {**expected, HEAD_NAME: expected["model.embed_tokens.weight"]}),
        PROMPT,
    )[-1]

    def weights_for(shard: Shard) -> ShardWeights:
        return load_hf_shard(root, shard)

    whole = factory.engine_for(weights_for, 0, TINY.num_layers - 1)
    factory.assert_matches_reference(whole.forward("r", PROMPT), reference, weights_for)
    split = [factory.engine_for(weights_for, 0, 1), factory.engine_for(weights_for, 2, 3)]
    factory.assert_matches_reference(run_chain(split, "r", PROMPT), reference, weights_for)


def test_a_matrix_without_bits_is_refused(tmp_path: Path) -> None:
    write_mlx_community(tmp_path, QUANTIZATION)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["quantization"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="no quantization bits"):
        load_hf_shard(tmp_path, WHOLE)


def test_unsupported_bits_are_refused(tmp_path: Path) -> None:
    write_mlx_community(tmp_path, {"group_size": 64, "bits": 4})
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization"]["bits"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="3-bit"):
        load_hf_shard(tmp_path, WHOLE)


def test_non_affine_modes_are_refused(tmp_path: Path) -> None:
    write_mlx_community(tmp_path, {"group_size": 64, "bits": 4})
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization"]["mode"] = "mxfp4"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="mxfp4"):
        load_hf_shard(tmp_path, WHOLE)
