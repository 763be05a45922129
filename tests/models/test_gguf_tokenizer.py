"""GGUF tokenizers of every kind against the model's own tokenizer.

Byte-level BPE: the ids of a GGUF's tokenizer equal those of the tokenizer.json
it was converted from, read by `tokenizers`. SentencePiece: they equal the
ids of the SentencePiece model itself (which the families' tokenizer.json
files reproduce), with and without Gemma-style "no dummy prefix".
"""

from __future__ import annotations

import unicodedata
from pathlib import Path

import gguf
import pytest
import sentencepiece as spm
import tokenizers
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tokenizer_fixtures import (
    BPE_FAMILIES,
    TEXTS,
    USER_SYMBOLS,
    train_byte_level_bpe,
    train_sentencepiece,
    write_byte_level_gguf,
    write_sentencepiece_gguf,
)

from exoquic.models.errors import ModelLoadError
from exoquic.models.tokenizer import Tokenizer


@pytest.fixture(scope="module", params=sorted(BPE_FAMILIES))
def bpe_pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, tokenizers.Tokenizer, Tokenizer]:
    pre: str = request.param
    out = tmp_path_factory.mktemp(pre)
    tokenizer_json = train_byte_level_bpe(pre, out)
    gguf_path = write_byte_level_gguf(tokenizer_json, pre, out)
    return pre, tokenizers.Tokenizer.from_file(str(tokenizer_json)), Tokenizer.from_gguf(gguf_path)


def test_byte_level_bpe_ids_match_tokenizer_json(
    bpe_pair: tuple[str, tokenizers.Tokenizer, Tokenizer],
) -> None:
    pre, reference, ours = bpe_pair
    for text in TEXTS:
        expected = reference.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == expected, (pre, text)
        assert ours.decode(expected) == reference.decode(expected), (pre, text)


def test_byte_level_bpe_round_trips_and_specials(
    bpe_pair: tuple[str, tokenizers.Tokenizer, Tokenizer],
) -> None:
    pre, reference, ours = bpe_pair
    for text in TEXTS:
        # Qwen normalizes to NFC, so its round trip gives the composed text.
        expected = unicodedata.normalize("NFC", text) if pre == "qwen2" else text
        assert ours.decode(ours.encode(text)) == expected
    specials = BPE_FAMILIES[pre]["special"]
    text = f"{specials[0]}Hi 42{specials[-1]}"
    ids = ours.encode(text)
    assert ids == reference.encode(text, add_special_tokens=False).ids
    assert ids[0] == reference.token_to_id(specials[0])
    assert ours.decode(ids, skip_special_tokens=True) == "Hi 42"
    assert reference.token_to_id(specials[-1]) in ours.eos_token_ids


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=60))
def test_byte_level_bpe_ids_match_on_any_text(
    bpe_pair: tuple[str, tokenizers.Tokenizer, Tokenizer], text: str
) -> None:
    _, reference, ours = bpe_pair
    assert ours.encode(text) == reference.encode(text, add_special_tokens=False).ids


def test_pre_tokenizers_differ_where_the_models_do(
    bpe_pair: tuple[str, tokenizers.Tokenizer, Tokenizer],
) -> None:
    """Digits: Llama 3 groups up to three, Qwen2 and SmolLM split each, GPT-2 keeps runs."""
    pre, _, ours = bpe_pair
    pieces = [ours.decode([i]) for i in ours.encode("1234567")]
    longest = {"llama-bpe": 3, "qwen2": 1, "smollm": 1, "gpt2": 7}[pre]
    assert max(map(len, pieces)) <= longest
    assert "".join(pieces) == "1234567"


@pytest.fixture(scope="module", params=[True, False], ids=["llama-style", "gemma-style"])
def spm_pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[spm.SentencePieceProcessor, Tokenizer]:
    sp = train_sentencepiece(add_dummy_prefix=request.param)
    path = write_sentencepiece_gguf(sp, "spm", tmp_path_factory.mktemp("spm"))
    return sp, Tokenizer.from_gguf(path)


def test_sentencepiece_ids_match_the_model(
    spm_pair: tuple[spm.SentencePieceProcessor, Tokenizer],
) -> None:
    sp, ours = spm_pair
    for text in TEXTS:
        assert ours.encode(text) == sp.encode(text), text
        assert ours.decode(ours.encode(text)) == sp.decode(sp.encode(text)) == text


MISTRAL_V0_3 = (
    Path(__file__).parents[1] / "fixtures" / "tokenizers" / "mistral_v0.3_tokenizer.model"
)


def test_mistral_v0_3_vocabulary_gives_its_own_ids(tmp_path: Path) -> None:
    """A real vocabulary: Mistral 7B v0.3's SentencePiece model (see fixtures/tokenizers)."""
    sp = spm.SentencePieceProcessor(model_file=str(MISTRAL_V0_3))
    assert sp.get_piece_size() == 32768
    ours = Tokenizer.from_gguf(write_sentencepiece_gguf(sp, "mistral", tmp_path))
    for text in TEXTS:
        assert ours.encode(text) == sp.encode(text), text
        assert ours.decode(ours.encode(text)) == text
    # Control tokens written in a prompt are their ids; the text around them is text.
    inst, end_inst = sp.piece_to_id("[INST]"), sp.piece_to_id("[/INST]")
    assert (inst, end_inst) == (3, 4)
    ids = ours.encode("[INST]2+2?[/INST]")
    assert ids == [inst, *sp.encode("2+2?"), end_inst]
    assert ours.decode(ids, skip_special_tokens=True) == "2+2?"
    # The prompt Mistral's chat template writes has the ids mistral_common
    # gives a conversation: each message encoded on its own, with its dummy prefix.
    prompt = "<s>[INST] Hello, how are you?[/INST] Fine, and you?</s>[INST] 1+1?[/INST]"
    expected = [sp.bos_id(), inst, *sp.encode("Hello, how are you?"), end_inst]
    expected += [*sp.encode("Fine, and you?"), sp.eos_id(), inst, *sp.encode("1+1?"), end_inst]
    assert ours.encode(prompt) == expected
    assert ours.decode(expected) == prompt


@pytest.fixture(scope="module")
def mistral(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[spm.SentencePieceProcessor, Tokenizer]:
    sp = spm.SentencePieceProcessor(model_file=str(MISTRAL_V0_3))
    path = write_sentencepiece_gguf(sp, "mistral", tmp_path_factory.mktemp("mistral"))
    return sp, Tokenizer.from_gguf(path)


def _transformers_tokenizer_json(sp: spm.SentencePieceProcessor, legacy: bool, out: Path) -> Path:
    """The tokenizer.json transformers makes of a SentencePiece BPE model: merges from
    its `generate_merges`, normalizer / pre-tokenizer as its `LlamaConverter` writes
    them with `legacy` True (Llama 2, Mistral v0.1) or False (newer conversions)."""
    convert = pytest.importorskip("transformers.convert_slow_tokenizer")
    pieces = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
    merges = convert.generate_merges(vocab, pieces)
    bpe = tokenizers.models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    tokenizer = tokenizers.Tokenizer(bpe)
    if legacy:
        prepend, replace = (
            tokenizers.normalizers.Prepend("▁"),
            tokenizers.normalizers.Replace(" ", "▁"),
        )
        tokenizer.normalizer = tokenizers.normalizers.Sequence([prepend, replace])
    else:
        tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Metaspace("▁", "first", split=False)
    control = [i for i in range(sp.get_piece_size()) if sp.is_control(i) or sp.is_unknown(i)]
    tokenizer.add_tokens(
        [tokenizers.AddedToken(sp.id_to_piece(i), special=True, normalized=False) for i in control]
    )
    path = out / f"tokenizer-{'legacy' if legacy else 'metaspace'}.json"
    tokenizer.save(str(path))
    return path


def test_mistral_ids_equal_transformers_tokenizer_json(
    mistral: tuple[spm.SentencePieceProcessor, Tokenizer], tmp_path: Path
) -> None:
    """Against tokenizer.json files made by transformers' own merge extraction: plain
    text as both forms give it, and Mistral's chat prompt as the newer form does."""
    sp, ours = mistral
    legacy = tokenizers.Tokenizer.from_file(str(_transformers_tokenizer_json(sp, True, tmp_path)))
    newer = tokenizers.Tokenizer.from_file(str(_transformers_tokenizer_json(sp, False, tmp_path)))
    for text in TEXTS:
        assert ours.encode(text) == legacy.encode(text, add_special_tokens=False).ids, text
    prompt = "<s>[INST] Hello, how are you?[/INST] Fine, and you?</s>[INST] 1+1?[/INST]"
    assert ours.encode(prompt) == newer.encode(prompt, add_special_tokens=False).ids
    assert ours.encode(prompt) != legacy.encode(prompt, add_special_tokens=False).ids


# Text without "[" and "<", so that no control token is spelled out in it.
ANY_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="[<"), max_size=60
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=ANY_TEXT)
@example(text="▁")  # a text starting with the visible space still gets the dummy prefix
@example(text="▁a b")
def test_mistral_ids_equal_sentencepiece_on_any_text(
    mistral: tuple[spm.SentencePieceProcessor, Tokenizer], text: str
) -> None:
    sp, ours = mistral
    assert ours.encode(text) == sp.encode(text)


def test_mistral_stream_decode_holds_back_byte_pieces(
    mistral: tuple[spm.SentencePieceProcessor, Tokenizer],
) -> None:
    """A reply's text streams whole characters only, with its spaces, whatever the pieces."""
    sp, ours = mistral
    reply = "Sure 😀 — ☃ done\n  indented"
    ids = ours.encode(reply)
    assert any(sp.is_byte(i) for i in ids)  # the emoji comes as <0xNN> pieces
    decoder = ours.stream_decoder()
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == reply
    assert not any("\ufffd" in p for p in pieces)


def test_sentencepiece_byte_fallback_and_specials(
    spm_pair: tuple[spm.SentencePieceProcessor, Tokenizer],
) -> None:
    sp, ours = spm_pair
    ids = ours.encode("☃")  # never seen in training: three <0xNN> byte pieces
    assert [sp.id_to_piece(i) for i in ids if sp.is_byte(i)] == ["<0xE2>", "<0x98>", "<0x83>"]
    assert ours.decode(ids) == "☃"
    # Chat markers and control tokens written in the text become their ids.
    marker = sp.piece_to_id(USER_SYMBOLS[1])
    assert marker in ours.encode(f"Hi{USER_SYMBOLS[1]}")
    assert ours.encode("</s>") == [sp.eos_id()]
    assert ours.decode([sp.eos_id()], skip_special_tokens=True) == ""
    assert ours.eos_token_ids >= {sp.eos_id(), marker}  # </s> and <end_of_turn> both end
    assert (ours.bos_token_id, ours.add_bos_token) == (sp.bos_id(), True)


def test_phi3_chat_tokens_swallow_the_whitespace_after_them(tmp_path: Path) -> None:
    """As Phi-3's tokenizer.json (rstrip) and llama.cpp do; other models keep it."""
    sp = train_sentencepiece(add_dummy_prefix=True)
    phi3 = Tokenizer.from_gguf(write_sentencepiece_gguf(sp, "phi3", tmp_path, arch="phi3"))
    llama = Tokenizer.from_gguf(write_sentencepiece_gguf(sp, "llama", tmp_path))
    user, end = sp.piece_to_id("<|user|>"), sp.piece_to_id("<|end|>")
    text = "<|user|>\nHi there<|end|>\n"
    assert phi3.encode(text) == [user, *sp.encode("Hi there"), end]
    assert llama.encode(text) == [user, *sp.encode("\nHi there"), end, *sp.encode("\n")]
    assert end in phi3.eos_token_ids


def _write_keys(path: Path, **keys: object) -> Path:
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in keys.items():
        if isinstance(value, list):
            writer.add_array(key, value)
        else:
            writer.add_string(key, str(value))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unknown_pre_tokenizer_is_refused(tmp_path: Path) -> None:
    path = _write_keys(
        tmp_path / "x.gguf",
        **{
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "deepseek-coder",
            "tokenizer.ggml.tokens": ["a", "b"],
            "tokenizer.ggml.merges": [],
        },
    )
    with pytest.raises(ModelLoadError, match=r"pre-tokenizer 'deepseek-coder'.*llama-bpe"):
        Tokenizer.from_gguf(path)


def test_bpe_without_a_pre_tokenizer_is_refused(tmp_path: Path) -> None:
    keys = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a"]}
    path = _write_keys(tmp_path / "x.gguf", **keys)
    with pytest.raises(ModelLoadError, match=r"names no pre-tokenizer \(tokenizer\.ggml\.pre\)"):
        Tokenizer.from_gguf(path)


def test_unknown_tokenizer_model_is_refused(tmp_path: Path) -> None:
    path = _write_keys(
        tmp_path / "x.gguf", **{"tokenizer.ggml.model": "t5", "tokenizer.ggml.tokens": ["a"]}
    )
    with pytest.raises(ModelLoadError, match="unsupported GGUF tokenizer model 't5'"):
        Tokenizer.from_gguf(path)


def test_sentencepiece_without_scores_is_refused(tmp_path: Path) -> None:
    path = _write_keys(
        tmp_path / "x.gguf", **{"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["a"]}
    )
    with pytest.raises(ModelLoadError, match="one score per token"):
        Tokenizer.from_gguf(path)


END_OF_TURN = [
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<end_of_turn>",
    "<|end|>",
    "</s>",
]


def test_every_end_of_turn_token_ends_generation(tmp_path: Path) -> None:
    """Declared eos, eot and eom ids, and each family's end-of-turn token, all stop."""
    specials = ["<|begin_of_text|>", "<|custom_eos|>", "<|custom_eot|>", "<|custom_eom|>"]
    tokens = [*map(chr, range(33, 127)), *specials, *END_OF_TURN, "<|not_an_end|>"]
    ids = {t: i for i, t in enumerate(tokens)}
    writer = gguf.GGUFWriter(str(tmp_path / "ends.gguf"), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types([1 if len(t) == 1 else 3 for t in tokens])
    writer.add_token_merges([])
    writer.add_bos_token_id(ids["<|begin_of_text|>"])
    writer.add_eos_token_id(ids["<|custom_eos|>"])
    writer.add_uint32("tokenizer.ggml.eot_token_id", ids["<|custom_eot|>"])
    writer.add_uint32("tokenizer.ggml.eom_token_id", ids["<|custom_eom|>"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tokenizer = Tokenizer.from_gguf(tmp_path / "ends.gguf")
    expected = {ids[t] for t in [*specials[1:], *END_OF_TURN]}
    assert tokenizer.eos_token_ids == expected
    assert tokenizer.eos_token_id == ids["<|custom_eos|>"]  # the template's eos_token


def test_an_end_token_that_is_plain_text_does_not_end(tmp_path: Path) -> None:
    """Only added (control) tokens spelled like an end of turn stop; a normal entry is text."""
    tokens = [*map(chr, range(33, 127)), "<|im_end|>", "</s>"]
    writer = gguf.GGUFWriter(str(tmp_path / "plain.gguf"), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("llama-bpe")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if t == "<|im_end|>" else 1 for t in tokens])
    writer.add_token_merges([])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tokenizer = Tokenizer.from_gguf(tmp_path / "plain.gguf")
    assert tokenizer.eos_token_ids == {tokens.index("<|im_end|>")}


# --- token_bytes: what one token stands for (the API's logprobs report it)


def test_byte_level_bpe_token_bytes_make_up_the_text(
    bpe_pair: tuple[str, tokenizers.Tokenizer, Tokenizer],
) -> None:
    pre, _, ours = bpe_pair
    for text in TEXTS:
        ids = ours.encode(text)
        # the decoded text (qwen2 normalizes to NFC first: not always `text` itself)
        assert b"".join(ours.token_bytes(i) for i in ids) == ours.decode(ids).encode(), (pre, text)
    assert ours.token_bytes(ours.vocab_size + 10) == b""


def test_sentencepiece_token_bytes_make_up_the_text(
    spm_pair: tuple[spm.SentencePieceProcessor, Tokenizer],
) -> None:
    sp, ours = spm_pair
    for text in [t for t in TEXTS if t]:
        ids = ours.encode(text)
        joined = b"".join(ours.token_bytes(i) for i in ids).decode()
        # SentencePiece writes a space before the text (the dummy prefix), as `▁`.
        assert joined in (ours.decode(ids), " " + ours.decode(ids)), text
    snowman = ours.encode("☃")  # byte pieces: one byte each
    assert [ours.token_bytes(i) for i in snowman if sp.is_byte(i)] == [b"\xe2", b"\x98", b"\x83"]
