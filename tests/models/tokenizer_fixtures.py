"""Tiny tokenizers of each kind, trained here, with the GGUF metadata llama.cpp writes.

No hub is reachable, so each model family's tokenizer is imitated: the
normalizer and pre-tokenizer sections below are copied from the families'
published tokenizer.json files, a small vocabulary is trained on `CORPUS`
with the `tokenizers` trainer (or `sentencepiece`'s, for SentencePiece
models), and the GGUF keys are written the way llama.cpp's
convert_hf_to_gguf.py writes them.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import gguf
import sentencepiece as spm
import tokenizers
from tokenizers import pre_tokenizers, trainers

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2024, isn't it? We'll see.",
    "Prices rose 1234567 times; pi is 3.14159 and e is 2.71828.",
    "héllo naïve café Ünïcödé straße façade",
    "日本語のテキストと中文文本、그리고 한국어 문장",
    "Привет, как дела? Всё хорошо. Ελληνικά γράμματα.",
    "emoji 😀👍🏽👨‍👩‍👧‍👦 🇫🇷 done",
    "def f(x: int) -> int:\n    return x ** 2  # square\n\n\tindented\r\n",
    "    leading spaces and trailing   \n\n\n   lines",
] * 20

# Text the trainers never saw in this order: all scripts, emoji, numbers,
# whitespace runs, tabs and newlines.
TEXTS = [
    "Hello, world! The fox's 12345 jumps; we're 3.5x faster.",
    "naïve façade, ÜNÏCÖDÉ and straße",
    "decomposed: cafe\u0301 nai\u0308ve",  # NFC (Qwen) composes these
    "日本語と中文 and 한국어, Привет мир, Ελληνικά",
    "emoji 😀👍🏽 👨‍👩‍👧‍👦🇫🇷!",
    "  two  spaces,   three,\t\ttabs\n\n\nnewlines\r\n end  ",
    "def g(y):\n        return y  # deep\n",
    "zzzqqq ʘʬ unseen ☃ characters",
    "",
]

# The `pre_tokenizer` / `normalizer` sections of each family's tokenizer.json
# (meta-llama/Llama-3.2-1B-Instruct, Qwen/Qwen2.5-7B-Instruct,
# HuggingFaceTB/SmolLM2-135M-Instruct, openai-community/gpt2).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}


def _split_then_bytes(regex: str) -> dict[str, Any]:
    split = {
        "type": "Split",
        "pattern": {"Regex": regex},
        "behavior": "Isolated",
        "invert": False,
    }
    return {"type": "Sequence", "pretokenizers": [split, {**_BYTE_LEVEL, "use_regex": False}]}


BPE_FAMILIES: dict[str, dict[str, Any]] = {
    "llama-bpe": {
        "normalizer": None,
        "pre_tokenizer": _split_then_bytes(_LLAMA3_SPLIT),
        "ignore_merges": True,
        "special": [
            "<|begin_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|eom_id|>",
            "<|end_of_text|>",
        ],
    },
    "qwen2": {
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": _split_then_bytes(_QWEN2_SPLIT),
        "ignore_merges": False,
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    },
    "smollm": {
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {**_BYTE_LEVEL, "use_regex": True},
            ],
        },
        "ignore_merges": False,
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    },
    "gpt2": {
        "normalizer": None,
        "pre_tokenizer": {**_BYTE_LEVEL, "use_regex": True},
        "ignore_merges": False,
        "special": ["<|endoftext|>"],
    },
}


def train_byte_level_bpe(pre: str, out: Path, vocab_size: int = 700) -> Path:
    """A trained byte-level BPE tokenizer.json of family `pre`; returns its path."""
    family = BPE_FAMILIES[pre]
    spec = {
        "version": "1.0",
        "added_tokens": [],
        "normalizer": family["normalizer"],
        "pre_tokenizer": family["pre_tokenizer"],
        "post_processor": None,
        "decoder": {**_BYTE_LEVEL, "use_regex": True},
        "model": {
            "type": "BPE",
            "vocab": {},
            "merges": [],
            "ignore_merges": family["ignore_merges"],
        },
    }
    tokenizer = tokenizers.Tokenizer.from_str(json.dumps(spec))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=family["special"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    path = out / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def write_byte_level_gguf(
    tokenizer_json: Path, pre: str, out: Path, chat_template: str | None = None
) -> Path:
    """The GGUF tokenizer keys convert_hf_to_gguf.py writes for a BPE tokenizer.json."""
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab: dict[str, int] = spec["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    special = {t["content"] for t in spec["added_tokens"] if t["special"]}
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    path = out / f"{pre}.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab[BPE_FAMILIES[pre]["special"][0]])
    writer.add_eos_token_id(vocab[BPE_FAMILIES[pre]["special"][-1]])
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    _finish(writer)
    return path


# SentencePiece trainer options of the families' tokenizer.model files: no
# normalization, whitespace kept, digits split, bytes as <0xNN> pieces.
_SPM_OPTIONS: dict[str, Any] = {
    "model_type": "bpe",
    "vocab_size": 400,
    "byte_fallback": True,
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "split_digits": True,
    "character_coverage": 0.9995,
    "unk_id": 0,
    "bos_id": 1,
    "eos_id": 2,
    "allow_whitespace_only_pieces": True,
}


USER_SYMBOLS = ("<start_of_turn>", "<end_of_turn>")
PHI3_SYMBOLS = ("<|user|>", "<|assistant|>", "<|end|>")  # control tokens in Phi-3's GGUF


def train_sentencepiece(add_dummy_prefix: bool) -> spm.SentencePieceProcessor:
    """A SentencePiece BPE model like Llama 2's (with a dummy prefix) or Gemma's (without)."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model,
        add_dummy_prefix=add_dummy_prefix,
        # Gemma and Phi-3 carry chat markers as extra pieces.
        user_defined_symbols=[*USER_SYMBOLS, *PHI3_SYMBOLS],
        minloglevel=2,
        **_SPM_OPTIONS,
    )
    return spm.SentencePieceProcessor(model_proto=model.getvalue())


def write_sentencepiece_gguf(
    sp: spm.SentencePieceProcessor, name: str, out: Path, arch: str = "llama"
) -> Path:
    """The keys convert_hf_to_gguf.py's `_create_vocab_sentencepiece` writes."""
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(_piece_type(sp, i))
    path = out / f"{name}.gguf"
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(sp.bos_id())
    writer.add_eos_token_id(sp.eos_id())
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(bool(_dummy_prefix(sp)))
    _finish(writer)
    return path


def _piece_type(sp: spm.SentencePieceProcessor, i: int) -> gguf.TokenType:
    if sp.is_unknown(i):
        return gguf.TokenType.UNKNOWN
    if sp.is_control(i):
        return gguf.TokenType.CONTROL
    if sp.is_byte(i):
        return gguf.TokenType.BYTE
    if sp.is_unused(i):
        return gguf.TokenType.UNUSED
    # convert_hf_to_gguf.py takes the chat markers' type from tokenizer_config.json.
    piece = sp.id_to_piece(i)
    if piece in PHI3_SYMBOLS:
        return gguf.TokenType.CONTROL
    return gguf.TokenType.USER_DEFINED if piece in USER_SYMBOLS else gguf.TokenType.NORMAL


def _dummy_prefix(sp: spm.SentencePieceProcessor) -> bool:
    # The model's own answer: does "a" come out with a leading "▁"?
    return sp.encode("a", out_type=str)[0].startswith("▁")


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
