"""Hugging Face directory loading: tiny hand-made checkpoints and the real model's copy."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from exoquic.models.errors import ModelLoadError
from exoquic.models.gguf_loader import load_gguf_shard, read_gguf_config
from exoquic.models.hf_loader import load_hf_shard, read_hf_config
from exoquic.models.shard import Shard
from exoquic.models.weights import QuantizedTensor, shard_tensor_names

TINY_CONFIG = {
    "model_type": "llama",
    "vocab_size": 32,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}


def _tiny_shapes() -> dict[str, tuple[int, ...]]:
    d, f, v, kv = 64, 96, 32, 2 * 16
    per_layer = {
        "input_layernorm.weight": (d,),
        "self_attn.q_proj.weight": (d, d),
        "self_attn.k_proj.weight": (kv, d),
        "self_attn.v_proj.weight": (kv, d),
        "self_attn.o_proj.weight": (d, d),
        "post_attention_layernorm.weight": (d,),
        "mlp.gate_proj.weight": (f, d),
        "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f),
    }
    shapes = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,)}
    shapes["lm_head.weight"] = (v, d)
    for i in range(3):
        shapes.update({f"model.layers.{i}.{k}": s for k, s in per_layer.items()})
    return shapes


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, np.ndarray]]) -> None:
    """A safetensors file written by hand, so bf16 (which numpy lacks) can be stored."""
    header: dict[str, object] = {}
    blobs, offset = [], 0
    for name, (dtype, raw) in tensors.items():
        data = raw.tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(raw.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def _tiny_model(root: Path, dtype: str) -> dict[str, np.ndarray]:
    """Write a 3-layer model in two files without an index; return the expected float32 values."""
    rng = np.random.default_rng(1)
    expected: dict[str, np.ndarray] = {}
    stored: dict[str, tuple[str, np.ndarray]] = {}
    for name, shape in _tiny_shapes().items():
        values = rng.standard_normal(shape).astype(np.float32)
        if dtype == "BF16":
            bits = (values.view(np.uint32) >> 16).astype(np.uint16)
            expected[name] = (bits.astype(np.uint32) << 16).view(np.float32)
            stored[name] = ("BF16", bits)
        else:
            half = values.astype(np.float16)
            expected[name] = half.astype(np.float32)
            stored[name] = ("F16", half)
    names = list(stored)
    _write_safetensors(root / "a.safetensors", {n: stored[n] for n in names[:15]})
    _write_safetensors(root / "b.safetensors", {n: stored[n] for n in names[15:]})
    (root / "config.json").write_text(json.dumps(TINY_CONFIG))
    return expected


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_tiny_model_without_index(tmp_path: Path, dtype: str) -> None:
    expected = _tiny_model(tmp_path, dtype)
    shard = Shard("tiny", 1, 2, 3)
    w = load_hf_shard(tmp_path, shard, weights="f32")
    assert set(w.tensors) == set(shard_tensor_names(shard))
    for name, array in w.tensors.items():
        assert isinstance(array, np.ndarray) and array.dtype == np.float32
        assert np.array_equal(array, expected[name]), name
    assert w.config.head_dim == 16 and not w.config.tie_word_embeddings


@pytest.mark.parametrize("dtype", ["BF16", "F16"])
def test_16_bit_matrices_become_q8_0_by_default(tmp_path: Path, dtype: str) -> None:
    expected = _tiny_model(tmp_path, dtype)
    w = load_hf_shard(tmp_path, Shard.whole("tiny", 3))
    for name, t in w.tensors.items():
        if expected[name].ndim == 1:  # norms stay float32
            assert isinstance(t, np.ndarray) and np.array_equal(t, expected[name])
            continue
        assert isinstance(t, QuantizedTensor) and t.kind == "q8_0", name
        # Q8_0 keeps ~8 bits: a few parts in a thousand of each block's largest value.
        err = np.abs(t.dequantize() - expected[name]).max()
        assert 0 < err < 0.01 * np.abs(expected[name]).max(), name
        assert t.blocks.nbytes == expected[name].size * 34 // 32  # ~1 byte per parameter


@pytest.mark.parametrize(("dtype", "kind"), [("BF16", "bf16"), ("F16", "f16")])
def test_keep_holds_16_bit_matrices_as_stored(tmp_path: Path, dtype: str, kind: str) -> None:
    expected = _tiny_model(tmp_path, dtype)
    w = load_hf_shard(tmp_path, Shard.whole("tiny", 3), weights="keep")
    t = w.tensors["model.layers.1.mlp.down_proj.weight"]
    assert isinstance(t, QuantizedTensor) and t.kind == kind
    assert np.array_equal(t.dequantize(), expected["model.layers.1.mlp.down_proj.weight"])


def test_float32_checkpoints_stay_float32_unless_a_kind_is_asked(hf_like_f32: Path) -> None:
    shard = Shard.whole("tiny", 3)
    assert isinstance(load_hf_shard(hf_like_f32, shard).tensors["lm_head.weight"], np.ndarray)
    t = load_hf_shard(hf_like_f32, shard, weights="q4_1").tensors["lm_head.weight"]
    assert isinstance(t, QuantizedTensor) and t.kind == "q4_1"


def test_rows_too_short_for_q4_k_take_q4_1(tmp_path: Path) -> None:
    _tiny_model(tmp_path, "BF16")  # rows of 64 and 96 values: no 256-value Q4_K block fits
    w = load_hf_shard(tmp_path, Shard.whole("tiny", 3), weights="q4_k")
    kinds = {t.kind for t in w.tensors.values() if isinstance(t, QuantizedTensor)}
    assert kinds == {"q4_1"}  # 32-value blocks, as llama.cpp falls back to Q5_0


def test_unknown_weights_choice_is_refused(tmp_path: Path) -> None:
    _tiny_model(tmp_path, "F16")
    with pytest.raises(ValueError, match="weights must be one of"):
        load_hf_shard(tmp_path, Shard.whole("tiny", 3), weights="q3_k")  # type: ignore[arg-type]


@pytest.fixture
def hf_like_f32(tmp_path: Path) -> Path:
    """The tiny model stored in float32."""
    rng = np.random.default_rng(2)
    stored = {
        n: ("F32", rng.standard_normal(s).astype(np.float32)) for n, s in _tiny_shapes().items()
    }
    _write_safetensors(tmp_path / "model.safetensors", stored)
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    return tmp_path


def test_untied_head_is_its_own_tensor(tmp_path: Path) -> None:
    expected = _tiny_model(tmp_path, "F16")
    w = load_hf_shard(tmp_path, Shard.whole("tiny", 3), weights="keep")
    assert np.array_equal(w.dense("lm_head.weight"), expected["lm_head.weight"])
    assert not np.array_equal(w.dense("lm_head.weight"), w.dense("model.embed_tokens.weight"))


def test_config_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"config\.json: file not found"):
        read_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"config\.json: cannot parse JSON"):
        read_hf_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="missing key"):
        read_hf_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**TINY_CONFIG, "model_type": "mamba"}))
    with pytest.raises(ModelLoadError, match="unsupported model_type 'mamba'"):
        read_hf_config(tmp_path)


def test_index_may_not_point_outside_the_directory(tmp_path: Path) -> None:
    _tiny_model(tmp_path, "F16")
    index = {"weight_map": {"model.norm.weight": "../secret.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="invalid file name"):
        load_hf_shard(tmp_path, Shard("tiny", 2, 2, 3))


def test_missing_tensor(tmp_path: Path) -> None:
    _tiny_model(tmp_path, "F16")
    (tmp_path / "b.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"model\.layers\.2\..* is in no safetensors file"):
        load_hf_shard(tmp_path, Shard("tiny", 2, 2, 3))


@pytest.mark.slow
def test_config_agrees_with_gguf(hf_model_dir: Path, smollm2_gguf_path: Path) -> None:
    assert read_hf_config(hf_model_dir) == read_gguf_config(smollm2_gguf_path)


@pytest.mark.slow
@pytest.mark.parametrize("layers", [(0, 9), (10, 19), (20, 29), (13, 13), (0, 29)])
def test_gguf_and_hf_weights_agree(
    hf_model_dir: Path, smollm2_gguf_path: Path, layers: tuple[int, int]
) -> None:
    shard = Shard("smollm2", layers[0], layers[1], 30)
    from_hf = load_hf_shard(hf_model_dir, shard)
    from_gguf = load_gguf_shard(smollm2_gguf_path, shard)
    assert set(from_hf.tensors) == set(from_gguf.tensors) == set(shard_tensor_names(shard))
    for name in from_gguf.tensors:
        assert np.array_equal(from_hf.dense(name), from_gguf.dense(name)), name


@pytest.mark.slow
def test_opens_only_the_files_holding_the_shard(hf_model_dir: Path, tmp_path: Path) -> None:
    """With the first file gone, a middle shard still loads; the first (and the last, whose
    tied head is the embedding) name the missing file."""
    index = json.loads((hf_model_dir / "model.safetensors.index.json").read_text())
    first_file = index["weight_map"]["model.embed_tokens.weight"]
    last_file = index["weight_map"]["model.norm.weight"]
    assert first_file != last_file
    for p in hf_model_dir.iterdir():
        if p.name != first_file:
            (tmp_path / p.name).symlink_to(p)
    middle = Shard("smollm2", 25, 27, 30)
    assert set(load_hf_shard(tmp_path, middle).tensors) == set(shard_tensor_names(middle))
    missing = re.escape(f"{first_file}: safetensors file not found")
    for layer in (0, 29):
        with pytest.raises(ModelLoadError, match=missing):
            load_hf_shard(tmp_path, Shard("smollm2", layer, layer, 30))


@pytest.mark.slow
def test_without_index_reads_headers(hf_model_dir: Path, tmp_path: Path) -> None:
    for p in hf_model_dir.iterdir():
        if p.name != "model.safetensors.index.json":
            (tmp_path / p.name).symlink_to(p)
    shard = Shard("smollm2", 29, 29, 30)
    a = load_hf_shard(tmp_path, shard)
    b = load_hf_shard(hf_model_dir, shard)
    for name in b.tensors:
        assert np.array_equal(a.dense(name), b.dense(name))
