"""Tokenizer from GGUF and from a Hugging Face directory: ids, decode, streaming, templates."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.hf_model import write_hf_tokenizer

from exoquic.models.errors import ChatTemplateError, ModelLoadError
from exoquic.models.tokenizer import Tokenizer

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Prices: 1234567 and 3.14159, dates 2024-06-01",
    "héllo naïve café Ünïcödé",
    "emoji 😀👍🏽👨‍👩‍👧‍👦 🇫🇷 done",
    "日本語のテキストと中文文本 and 한국어",
    'def f(x: int) -> int:\n    """Square."""\n\treturn x ** 2  # tab & spaces\n',
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "  leading and trailing spaces  \n\n\n",
    "",
]

# The default chat prompt for "What is the capital of France?" as llama.cpp tokenizes it.
FRANCE_PROMPT_IDS = [
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411,
    407, 19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1,
    520, 9531, 198,
]  # fmt: skip


@pytest.fixture(scope="module")
def gguf_tokenizer(smollm2_gguf_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_gguf_path)


@pytest.fixture(scope="module")
def hf_tokenizer(smollm2_gguf_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    out = tmp_path_factory.mktemp("hf-tokenizer")
    write_hf_tokenizer(smollm2_gguf_path, out)
    return Tokenizer.from_hf_dir(out)


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip(gguf_tokenizer: Tokenizer, text: str) -> None:
    assert gguf_tokenizer.decode(gguf_tokenizer.encode(text)) == text


def test_special_tokens_and_digits(gguf_tokenizer: Tokenizer) -> None:
    assert gguf_tokenizer.encode("<|im_start|><|im_end|><|endoftext|>") == [1, 2, 0]
    digits = gguf_tokenizer.encode("12345")
    assert len(digits) == 5
    assert [gguf_tokenizer.decode([i]) for i in digits] == list("12345")
    assert gguf_tokenizer.decode([1, 2], skip_special_tokens=True) == ""


def test_ids_match_llama_cpp(gguf_tokenizer: Tokenizer) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = gguf_tokenizer.apply_chat_template(messages)
    assert gguf_tokenizer.encode(prompt) == FRANCE_PROMPT_IDS


def test_special_ids(gguf_tokenizer: Tokenizer) -> None:
    assert gguf_tokenizer.vocab_size == 49152
    assert gguf_tokenizer.bos_token_id == 1
    # eos is <|im_end|>; <|endoftext|> also ends generation.
    assert gguf_tokenizer.eos_token_ids == frozenset({0, 2})
    assert gguf_tokenizer.token_id("<|im_end|>") == 2


def test_gguf_and_hf_agree(gguf_tokenizer: Tokenizer, hf_tokenizer: Tokenizer) -> None:
    for text in TEXTS:
        assert hf_tokenizer.encode(text) == gguf_tokenizer.encode(text), text
    messages = [{"role": "user", "content": "Hi"}]
    prompt = gguf_tokenizer.apply_chat_template(messages)
    assert hf_tokenizer.apply_chat_template(messages) == prompt
    assert hf_tokenizer.eos_token_ids == gguf_tokenizer.eos_token_ids
    assert hf_tokenizer.bos_token_id == gguf_tokenizer.bos_token_id
    assert hf_tokenizer.vocab_size == gguf_tokenizer.vocab_size
    # The GGUF's figure comes from its token list, the directory's from the backend.
    assert hf_tokenizer.longest_token_chars == gguf_tokenizer.longest_token_chars


def test_chat_template_default_system_prompt(gguf_tokenizer: Tokenizer) -> None:
    prompt = gguf_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
        "trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    own_system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    prompt = gguf_tokenizer.apply_chat_template(own_system, add_generation_prompt=False)
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


@pytest.mark.parametrize("text", TEXTS)
def test_stream_decode_never_splits_a_character(gguf_tokenizer: Tokenizer, text: str) -> None:
    decoder = gguf_tokenizer.stream_decoder()
    pieces = [decoder.push(i) for i in gguf_tokenizer.encode(text)]
    pieces.append(decoder.flush())
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_stream_decode_holds_back_partial_emoji(gguf_tokenizer: Tokenizer) -> None:
    ids = gguf_tokenizer.encode("😀")
    assert len(ids) > 1  # byte-level BPE splits it
    decoder = gguf_tokenizer.stream_decoder()
    assert [decoder.push(i) for i in ids] == [""] * (len(ids) - 1) + ["😀"]
    # An unfinished character at the end comes out as a replacement on flush.
    decoder = gguf_tokenizer.stream_decoder()
    assert decoder.push(ids[0]) == ""
    assert decoder.flush() == "\ufffd"
    assert decoder.flush() == ""


def test_stream_decode_can_skip_special_tokens(gguf_tokenizer: Tokenizer) -> None:
    decoder = gguf_tokenizer.stream_decoder(skip_special_tokens=True)
    text = "".join(decoder.push(i) for i in gguf_tokenizer.encode("Hi<|im_end|> there"))
    assert text + decoder.flush() == "Hi there"


def test_template_raise_exception(gguf_tokenizer: Tokenizer) -> None:
    strict = Tokenizer(
        gguf_tokenizer.backend,
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('user first') }}{% endif %}ok",
        gguf_tokenizer.bos_token_id,
        gguf_tokenizer.eos_token_ids,
    )
    assert strict.apply_chat_template([{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(ChatTemplateError, match="user first"):
        strict.apply_chat_template([{"role": "assistant", "content": "x"}])


def test_template_is_sandboxed(gguf_tokenizer: Tokenizer) -> None:
    evil = Tokenizer(
        gguf_tokenizer.backend,
        "{{ messages.__class__.__mro__[1].__subclasses__() }}",
        None,
        frozenset(),
    )
    with pytest.raises(ChatTemplateError):
        evil.apply_chat_template([{"role": "user", "content": "x"}])


def test_template_like_transformers(gguf_tokenizer: Tokenizer) -> None:
    """trim_blocks/lstrip_blocks, loop controls, tojson and special-token variables."""
    template = (
        "{% for m in messages %}\n"
        "  {% if m.role == 'skip' %}{% continue %}{% endif %}\n"
        "{{ bos_token }}{{ m | tojson }}{{ eos_token }}\n"
        "{% endfor %}"
    )
    t = Tokenizer(gguf_tokenizer.backend, template, 1, frozenset({2}))
    messages = [{"role": "skip", "content": ""}, {"role": "user", "content": "é"}]
    expected = '<|im_start|>{"role": "user", "content": "é"}<|im_end|>\n'
    assert t.apply_chat_template(messages) == expected


def test_no_template_falls_back_to_chatml(gguf_tokenizer: Tokenizer) -> None:
    t = Tokenizer(gguf_tokenizer.backend, None, None, frozenset())
    prompt = t.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_hf_dir_without_tokenizer(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"tokenizer\.json"):
        Tokenizer.from_hf_dir(tmp_path)
