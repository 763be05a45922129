"""GGUF loading of the bundled SmolLM2 model: config, names, layout, shards."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from models.tiny_gguf import finish, tiny_llama_writer

from exoquic.models.errors import ModelLoadError
from exoquic.models.gguf_file import GGUFFile
from exoquic.models.gguf_loader import (
    load_gguf_shard,
    permute_rope_rows,
    read_gguf_config,
    unpermute_rope_rows,
)
from exoquic.models.registry import bundled_gguf_path
from exoquic.models.shard import Shard
from exoquic.models.weights import LAYER_SUFFIXES, QuantizedTensor

GGUF_PATH = bundled_gguf_path()


def test_config_matches_smollm2() -> None:
    c = read_gguf_config(GGUF_PATH)
    assert (c.architecture, c.num_layers, c.hidden_size, c.intermediate_size) == (
        "llama",
        30,
        576,
        1536,
    )
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size) == (9, 3, 64, 49152)
    assert c.rope_theta == 100000.0
    assert c.rms_norm_eps == 1e-5
    assert c.tie_word_embeddings


@pytest.mark.slow  # gguf.GGUFReader takes several seconds on this file
def test_header_matches_gguf_reader() -> None:
    """Our header parser agrees with the `gguf` package's reader on every tensor."""
    ours = GGUFFile.open(GGUF_PATH)
    ref = gguf.GGUFReader(GGUF_PATH)
    assert ours.metadata["tokenizer.ggml.tokens"] == ref.fields["tokenizer.ggml.tokens"].contents()
    assert list(ours.tensors) == [t.name for t in ref.tensors]
    for t in ref.tensors[:20]:
        assert ours.tensors[t.name].ggml_type == t.tensor_type
        data = ours.read_tensor(t.name)
        assert data.shape == t.data.shape
        assert np.array_equal(data, t.data)


def test_middle_shard_holds_only_its_layers() -> None:
    w = load_gguf_shard(GGUF_PATH, Shard("m", 10, 19, 30))
    expected = {f"model.layers.{i}.{s}" for i in range(10, 20) for s in LAYER_SUFFIXES}
    assert len(expected) == 10 * 9
    assert set(w.tensors) == expected


def test_first_and_last_shards() -> None:
    first = load_gguf_shard(GGUF_PATH, Shard("m", 0, 1, 30))
    assert "model.embed_tokens.weight" in first.tensors
    assert "lm_head.weight" not in first.tensors
    last = load_gguf_shard(GGUF_PATH, Shard("m", 28, 29, 30))
    assert "model.embed_tokens.weight" not in last.tensors
    assert {"model.norm.weight", "lm_head.weight"} <= set(last.tensors)
    head = last.tensors["lm_head.weight"]
    assert isinstance(head, QuantizedTensor)
    assert (head.kind, head.shape) == ("q8_0", (49152, 576))
    assert np.array_equal(last.dense("lm_head.weight"), first.dense("model.embed_tokens.weight"))


def test_types_and_shapes() -> None:
    w = load_gguf_shard(GGUF_PATH, Shard("m", 0, 0, 30))
    q = w.layer(0, "self_attn.q_proj.weight")
    k = w.layer(0, "self_attn.k_proj.weight")
    down = w.layer(0, "mlp.down_proj.weight")
    norm = w.layer(0, "input_layernorm.weight")
    assert isinstance(q, QuantizedTensor) and (q.kind, q.shape) == ("q4_1", (576, 576))
    assert isinstance(k, QuantizedTensor) and k.shape == (192, 576)
    assert isinstance(down, QuantizedTensor) and down.shape == (576, 1536)
    assert q.blocks.dtype == np.uint8 and q.blocks.shape == (576, 576 // 32 * 20)
    assert isinstance(norm, np.ndarray) and norm.dtype == np.float32 and norm.shape == (576,)
    assert w.dense("model.layers.0.mlp.down_proj.weight").shape == (576, 1536)


def test_rope_rows_are_unpermuted() -> None:
    """Dequantizing our Q/K and re-applying llama.cpp's permutation gives the file's matrix."""
    w = load_gguf_shard(GGUF_PATH, Shard("m", 3, 3, 30))
    gf = GGUFFile.open(GGUF_PATH)
    for ours, theirs, heads in (("q_proj", "attn_q", 9), ("k_proj", "attn_k", 3)):
        raw = gf.read_tensor(f"blk.3.{theirs}.weight")
        file_matrix = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_1)
        mine = w.dense(f"model.layers.3.self_attn.{ours}.weight")
        assert not np.array_equal(mine, file_matrix)
        assert np.array_equal(permute_rope_rows(mine, heads), file_matrix)


def test_unpermute_inverts_permute() -> None:
    w = np.arange(6 * 64 * 3, dtype=np.float32).reshape(6 * 64, 3)
    assert np.array_equal(unpermute_rope_rows(permute_rope_rows(w, 6), 6), w)
    # Within one head, half-split row j pairs with row j + 32; interleaved puts them side by side.
    p = permute_rope_rows(w, 6)
    assert np.array_equal(p[1], w[32]) and np.array_equal(p[2], w[1])


def test_weights_are_views_of_the_mapped_file() -> None:
    w = load_gguf_shard(GGUF_PATH, Shard("m", 5, 5, 30))
    up = w.layer(5, "mlp.up_proj.weight")
    assert isinstance(up, QuantizedTensor)
    assert not up.blocks.flags.writeable and up.blocks.flags.c_contiguous  # the map's pages
    gf = GGUFFile.open(GGUF_PATH)
    assert np.array_equal(up.blocks, gf.read_tensor("blk.5.ffn_up.weight"))
    # Q and K rows are reordered: copies of their own.
    q = w.layer(5, "self_attn.q_proj.weight")
    assert isinstance(q, QuantizedTensor) and q.blocks.flags.writeable


def test_shard_layer_count_must_match() -> None:
    with pytest.raises(ModelLoadError, match="30 layers"):
        load_gguf_shard(GGUF_PATH, Shard("m", 0, 3, 4))


def _write_tiny_gguf(
    path: Path, skip: str = "", matrix_type: gguf.GGMLQuantizationType | None = None
) -> dict[str, np.ndarray]:
    """A 1-layer llama GGUF with f16/bf16/f32 tensors and its own output head
    (or every matrix in `matrix_type`).

    Returns the file's float32 values of every tensor (GGUF layout).
    """
    rng = np.random.default_rng(2)
    writer = tiny_llama_writer(path, rope_freq_base=10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    shapes = {
        "token_embd.weight": (16, 64),
        "output.weight": (16, 64),
        "output_norm.weight": (64,),
        "blk.0.attn_norm.weight": (64,),
        "blk.0.ffn_norm.weight": (64,),
        "blk.0.attn_q.weight": (64, 64),
        "blk.0.attn_k.weight": (32, 64),
        "blk.0.attn_v.weight": (32, 64),
        "blk.0.attn_output.weight": (64, 64),
        "blk.0.ffn_gate.weight": (96, 64),
        "blk.0.ffn_up.weight": (96, 64),
        "blk.0.ffn_down.weight": (64, 96),
    }
    expected: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name == skip:
            continue
        values = rng.standard_normal(shape).astype(np.float32)
        if len(shape) == 1:
            writer.add_tensor(name, values)
            expected[name] = values
        elif matrix_type is not None:
            raw = gguf.quants.quantize(values, matrix_type)
            writer.add_tensor(name, raw, raw_dtype=matrix_type)
            expected[name] = gguf.quants.dequantize(raw, matrix_type)
        elif name == "blk.0.attn_v.weight":
            raw = gguf.quants.quantize(values, gguf.GGMLQuantizationType.BF16)
            writer.add_tensor(name, raw, raw_dtype=gguf.GGMLQuantizationType.BF16)
            expected[name] = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.BF16)
        else:
            writer.add_tensor(name, values.astype(np.float16))
            expected[name] = values.astype(np.float16).astype(np.float32)
    finish(writer)
    return expected


def test_tiny_float_gguf_with_untied_head(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    expected = _write_tiny_gguf(path)
    w = load_gguf_shard(path, Shard.whole("tiny", 1))
    assert not w.config.tie_word_embeddings and w.config.head_dim == 16
    # 16-bit matrices stay 16-bit (f16 / bf16 blocks); 1-D tensors are float32.
    for name, t in w.tensors.items():
        if name.endswith("norm.weight"):
            assert isinstance(t, np.ndarray) and t.dtype == np.float32
        else:
            assert isinstance(t, QuantizedTensor) and t.blocks.dtype == np.uint8
            assert t.kind == ("bf16" if "v_proj" in name else "f16")
    assert np.array_equal(w.dense("lm_head.weight"), expected["output.weight"])
    assert np.array_equal(
        w.dense("model.layers.0.self_attn.v_proj.weight"), expected["blk.0.attn_v.weight"]
    )
    k = w.dense("model.layers.0.self_attn.k_proj.weight")
    assert np.array_equal(permute_rope_rows(k, 2), expected["blk.0.attn_k.weight"])
    assert np.array_equal(
        w.dense("model.layers.0.mlp.down_proj.weight"), expected["blk.0.ffn_down.weight"]
    )


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    _write_tiny_gguf(path, skip="blk.0.ffn_down.weight")
    with pytest.raises(
        ModelLoadError, match=r"tiny\.gguf: tensor blk\.0\.ffn_down\.weight is missing"
    ):
        load_gguf_shard(path, Shard.whole("tiny", 1))


@pytest.mark.parametrize(
    ("ggml_type", "kind"),
    [(gguf.GGMLQuantizationType.Q5_0, "q5_0"), (gguf.GGMLQuantizationType.Q5_1, "q5_1")],
)
def test_5_bit_matrices_stay_quantized(
    tmp_path: Path, ggml_type: gguf.GGMLQuantizationType, kind: str
) -> None:
    path = tmp_path / "tiny.gguf"
    expected = _write_tiny_gguf(path, matrix_type=ggml_type)
    w = load_gguf_shard(path, Shard.whole("tiny", 1))
    down = w.tensors["model.layers.0.mlp.down_proj.weight"]
    assert isinstance(down, QuantizedTensor) and (down.kind, down.shape) == (kind, (64, 96))
    assert np.array_equal(down.dequantize(), expected["blk.0.ffn_down.weight"])
    q = w.dense("model.layers.0.self_attn.q_proj.weight")
    assert np.array_equal(permute_rope_rows(q, 4), expected["blk.0.attn_q.weight"])
