"""tools/gen_gguf.py: real-shape GGUFs with random, valid blocks in llama.cpp's mixes."""

from __future__ import annotations

from pathlib import Path

import gen_gguf
import numpy as np
import pytest
from gen_gguf import SHAPES, tensor_type
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFWriter
from gguf.quants import dequantize

from exoquic.models.gguf_file import GGUFFile
from exoquic.models.gguf_loader import read_gguf_config


def _types(mix: str, shape: str) -> dict[str, T]:
    s = SHAPES[shape]
    return {
        name: tensor_type(mix, name, dims[1], s.layers, s.tied, s.heads // s.kv_heads)
        for name, dims in gen_gguf.tensor_shapes(s)
        if len(dims) == 2
    }


def test_q4_k_m_gives_q6_k_to_the_layers_llama_cpp_picks() -> None:
    types = _types("q4_k_m", "llama-3.2-1b")
    # 16 layers: the first and last eighth (0, 1, 14, 15) and every third from 2 (4, 7, 10, 13).
    more_bits = {0, 1, 4, 7, 10, 13, 14, 15}
    for i in range(16):
        wanted = T.Q6_K if i in more_bits else T.Q4_K
        assert types[f"blk.{i}.attn_v.weight"] == wanted
        assert types[f"blk.{i}.ffn_down.weight"] == wanted
        assert types[f"blk.{i}.attn_q.weight"] == T.Q4_K
        assert types[f"blk.{i}.ffn_up.weight"] == T.Q4_K
    assert types["token_embd.weight"] == T.Q6_K  # tied: the embedding is the output head


def test_untied_head_is_q6_k_and_embedding_keeps_the_base_type() -> None:
    types = _types("q5_k_m", "llama-3.1-8b")
    assert types["output.weight"] == T.Q6_K
    assert types["token_embd.weight"] == T.Q5_K
    assert set(_types("q8_0", "llama-3.1-8b").values()) == {T.Q8_0}
    assert set(_types("q6_k", "qwen2.5-7b").values()) == {T.Q6_K}


@pytest.mark.parametrize("mix", ["iq4_xs", "iq4_nl"])
def test_iq4_mixes_give_more_bits_where_llama_quantize_does(mix: str) -> None:
    base = T.IQ4_XS if mix == "iq4_xs" else T.IQ4_NL
    types = _types(mix, "llama-3.2-1b")  # 32 query heads on 8 kv heads, 16 layers
    assert types["token_embd.weight"] == T.Q6_K  # tied: the embedding is the output head
    for i in range(16):
        assert types[f"blk.{i}.attn_v.weight"] == T.Q5_K  # 4 query heads per kv head
        assert types[f"blk.{i}.ffn_down.weight"] == (T.Q5_K if i < 2 else base)
        assert types[f"blk.{i}.attn_q.weight"] == base
        assert types[f"blk.{i}.ffn_gate.weight"] == base
    untied = _types(mix, "llama-3.1-8b")
    assert (untied["token_embd.weight"], untied["output.weight"]) == (base, T.Q6_K)
    assert _types(mix, "qwen2.5-7b")["blk.3.attn_v.weight"] == T.Q5_K  # 28 on 4
    assert tensor_type(mix, "blk.3.attn_v.weight", 2048, 16, tied=True, gqa=2) == base


@pytest.mark.parametrize(
    ("mix", "name", "wanted"),
    [
        ("iq4_xs", "blk.3.attn_q.weight", T.IQ4_NL),
        ("q4_k_m", "blk.3.attn_q.weight", T.Q5_0),
        ("q5_k_m", "blk.3.attn_q.weight", T.Q5_1),
        ("q6_k", "blk.3.attn_q.weight", T.Q8_0),
        ("q4_k_m", "output.weight", T.Q8_0),
    ],
)
def test_rows_not_a_multiple_of_256_fall_back_like_llama_cpp(
    mix: str, name: str, wanted: T
) -> None:
    assert tensor_type(mix, name, 576, 30, tied=False) == wanted


@pytest.mark.parametrize("qtype", list(gen_gguf.SCALE_FIELDS))
def test_random_blocks_decode_to_finite_weights_of_the_planned_size(qtype: T) -> None:
    rows, cols = 64, 512
    blocks = gen_gguf.random_blocks(qtype, rows, cols, np.random.default_rng(3))
    values = dequantize(blocks, qtype)
    assert values.shape == (rows, cols)
    assert np.isfinite(values).all()
    # Near 1/sqrt(row length): activations neither vanish nor blow up through the layers.
    assert 0.2 < float(values.std()) * np.sqrt(cols) < 2.0


def test_generated_file_reads_back_as_planned(tmp_path: Path) -> None:
    out = tmp_path / "tiny.gguf"
    gen_gguf.generate("tiny", "q4_k_m", out, seed=1)
    gf = GGUFFile.open(out)  # strict: checks every offset and size against the file
    wanted = _types("q4_k_m", "tiny")
    shape = SHAPES["tiny"]
    assert list(gf.tensors) == [n for n, _ in gen_gguf.tensor_shapes(shape)]
    for name, info in gf.tensors.items():
        assert info.ggml_type == wanted.get(name, T.F32), name
    head = gf.read_tensor("token_embd.weight")
    assert np.isfinite(dequantize(head, T.Q6_K)).all()
    assert len(gf.metadata["tokenizer.ggml.tokens"]) == shape.vocab
    assert gf.metadata["general.file_type"] == 15  # MOSTLY_Q4_K_M
    config = read_gguf_config(out)
    assert (config.num_layers, config.hidden_size, config.num_kv_heads) == (4, 256, 2)


def test_vocabulary_is_padded_with_control_tokens(tmp_path: Path) -> None:
    source = tmp_path / "small-vocab.gguf"
    writer = GGUFWriter(source, "llama")
    writer.add_token_list(["a", "b", "c"])
    writer.add_token_types([1, 1, 3])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()

    out = GGUFWriter(tmp_path / "padded.gguf", "llama")
    gen_gguf.copy_tokenizer(out, source, vocab=6)
    out.write_header_to_file()
    out.write_kv_data_to_file()
    out.close()
    fields = GGUFReader(tmp_path / "padded.gguf").fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    assert tokens == ["a", "b", "c", "<|pad_3|>", "<|pad_4|>", "<|pad_5|>"]
    assert fields["tokenizer.ggml.token_type"].contents() == [1, 1, 3, 3, 3, 3]
    with pytest.raises(ValueError, match="more than 2 tokens"):
        gen_gguf.copy_tokenizer(GGUFWriter(None, "llama"), source, vocab=2)


def test_llama3_rope_factors_match_exoquic_scaling() -> None:
    from exoquic.models.config import Llama3RopeScaling
    from exoquic.models.rope import inverse_frequencies

    shape = SHAPES["llama-3.2-1b"]
    factors = gen_gguf.llama3_rope_factors(shape)
    plain = inverse_frequencies(shape.head_dim, shape.rope_theta)
    scaled = inverse_frequencies(
        shape.head_dim, shape.rope_theta, Llama3RopeScaling(32.0, 1.0, 4.0, 8192)
    )
    np.testing.assert_allclose(plain / factors, scaled, rtol=1e-6)
