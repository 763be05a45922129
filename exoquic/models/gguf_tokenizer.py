"""A `tokenizers.Tokenizer` rebuilt from a GGUF file's tokenizer metadata.

GGUF stores a tokenizer as keys (`tokenizer.ggml.*`): the vocabulary in id
order, token types, and either BPE merges (`model = gpt2`) or SentencePiece
scores (`model = llama`). We rebuild what the model's own `tokenizer.json`
says, so a GGUF and its Hugging Face repository give the same ids:

- byte-level BPE: the pre-tokenizer each model declares in
  `tokenizer.ggml.pre`, with the regexes llama.cpp (`llama-vocab.cpp`) and the
  models' tokenizer.json files use. An unknown name is refused: a wrong
  pre-tokenizer gives plausible but wrong ids.
- SentencePiece BPE (Llama 2, Mistral, TinyLlama, Phi-3, Gemma): merges
  recovered from the scores the way transformers' `SentencePieceExtractor`
  builds tokenizer.json (every split of a piece into two pieces, ranked by the
  piece's score), "▁" for spaces, `<0xNN>` byte fallback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers

from exoquic.models.errors import ModelLoadError

# GGUF token types (gguf.TokenType).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# The types that become added tokens, matched whole in text.
ADDED_TYPES = frozenset({UNKNOWN, CONTROL, USER_DEFINED})

# llama.cpp's LLAMA_VOCAB_PRE_TYPE_LLAMA3 regex, as in Llama 3's tokenizer.json:
# numbers in groups of up to three digits.
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# LLAMA_VOCAB_PRE_TYPE_QWEN2, as in Qwen2/2.5/3's tokenizer.json: one digit per piece.
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPACE = "▁"  # SentencePiece's visible space (U+2581)


def backend_from_gguf(name: str, md: Mapping[str, Any]) -> tokenizers.Tokenizer:
    """The tokenizer a GGUF's metadata describes; `name` (the file) appears in errors."""
    kind = md.get("tokenizer.ggml.model")
    tokens = md.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise ModelLoadError(f"{name}: no tokenizer vocabulary (tokenizer.ggml.tokens)")
    types = list(md.get("tokenizer.ggml.token_type") or [NORMAL] * len(tokens))
    if len(types) != len(tokens):
        raise ModelLoadError(f"{name}: {len(types)} token types for {len(tokens)} tokens")
    if kind == "gpt2":
        backend = _byte_level_bpe(name, md, tokens)
    elif kind == "llama":
        backend = _sentencepiece_bpe(name, md, tokens, types)
    else:
        raise ModelLoadError(
            f"{name}: unsupported GGUF tokenizer model {kind!r} "
            "(supported: gpt2 byte-level BPE, llama SentencePiece)"
        )
    phi3 = md.get("general.architecture") == "phi3"
    _add_special_tokens(backend, tokens, types, _phi3_rstrip if phi3 else _no_rstrip)
    return backend


def _byte_level_bpe(name: str, md: Mapping[str, Any], tokens: list[str]) -> tokenizers.Tokenizer:
    pre = md.get("tokenizer.ggml.pre")
    if pre is None:
        # Files converted before llama.cpp recorded it (spring 2024): llama.cpp
        # guesses GPT-2's split and warns that quality degrades; we refuse.
        raise ModelLoadError(
            f"{name}: the BPE tokenizer names no pre-tokenizer (tokenizer.ggml.pre); "
            "the file predates llama.cpp recording it: use a newer conversion"
        )
    if pre not in BYTE_LEVEL_PRE:
        known = ", ".join(sorted(BYTE_LEVEL_PRE))
        raise ModelLoadError(
            f"{name}: unsupported BPE pre-tokenizer {pre!r} (tokenizer.ggml.pre; "
            f"supported: {known})"
        )
    merges = [tuple(m.split(" ", 1)) for m in md.get("tokenizer.ggml.merges", [])]
    bpe = models.BPE(
        vocab={t: i for i, t in enumerate(tokens)},
        merges=merges,
        # Llama 3 takes a whole pre-token that is in the vocabulary as is
        # (tokenizer.json's ignore_merges; llama.cpp's tokenizer_ignore_merges).
        ignore_merges=pre in _IGNORE_MERGES_PRE,
    )
    backend = tokenizers.Tokenizer(bpe)
    if pre in _NFC_PRE:  # Qwen's tokenizer.json normalizes to NFC first
        backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = BYTE_LEVEL_PRE[pre]()
    backend.decoder = decoders.ByteLevel()
    return backend


def _split_then_bytes(regex: str) -> pre_tokenizers.PreTokenizer:
    """The Llama 3 / Qwen form: one regex split, then bytes as characters."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _gpt2() -> pre_tokenizers.PreTokenizer:
    # ByteLevel's own regex is GPT-2's (llama.cpp's LLAMA_VOCAB_PRE_TYPE_GPT2).
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _smollm() -> pre_tokenizers.PreTokenizer:
    # LLAMA_VOCAB_PRE_TYPE_SMOLLM: single digits, then GPT-2's regex.
    digits = pre_tokenizers.Digits(individual_digits=True)
    return pre_tokenizers.Sequence([digits, _gpt2()])


# `tokenizer.ggml.pre` names -> the pre-tokenizer of the models that carry them.
BYTE_LEVEL_PRE = {
    "gpt2": _gpt2,
    "smollm": _smollm,
    "llama-bpe": lambda: _split_then_bytes(LLAMA3_REGEX),
    "llama3": lambda: _split_then_bytes(LLAMA3_REGEX),
    "qwen2": lambda: _split_then_bytes(QWEN2_REGEX),
}
_IGNORE_MERGES_PRE = frozenset({"llama-bpe", "llama3"})
_NFC_PRE = frozenset({"qwen2"})


def _sentencepiece_bpe(
    name: str, md: Mapping[str, Any], tokens: list[str], types: list[int]
) -> tokenizers.Tokenizer:
    scores = md.get("tokenizer.ggml.scores")
    if not isinstance(scores, list) or len(scores) != len(tokens):
        raise ModelLoadError(f"{name}: a SentencePiece vocabulary needs one score per token")
    unk = md.get("tokenizer.ggml.unknown_token_id")
    bpe = models.BPE(
        vocab={t: i for i, t in enumerate(tokens)},
        merges=sentencepiece_merges(tokens, scores, types),
        unk_token=None if unk is None else tokens[int(unk)],
        fuse_unk=True,
        byte_fallback=True,
    )
    backend = tokenizers.Tokenizer(bpe)
    prefix = has_dummy_prefix(md)
    if prefix:
        # A space before each stretch of text (the text and what follows each
        # special token) unless it starts with one: "[INST] Hello" is [INST],
        # "▁Hello", as Mistral's own tokenizer (mistral_common) makes it and its
        # chat template expects, where llama.cpp adds a second "▁". A text that
        # starts with a space gets its dummy prefix from `Tokenizer.encode`.
        backend.pre_tokenizer = pre_tokenizers.Metaspace(SPACE, "always", split=False)
    else:
        backend.normalizer = normalizers.Replace(" ", SPACE)  # Gemma: no dummy prefix
    steps = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(steps)
    return backend


def has_dummy_prefix(md: Mapping[str, Any]) -> bool:
    """Whether a SentencePiece vocabulary puts a space before the text
    (`tokenizer.ggml.add_space_prefix`: Llama 2, Mistral, Phi-3 yes; Gemma no)."""
    is_sentencepiece = md.get("tokenizer.ggml.model") == "llama"
    return is_sentencepiece and bool(md.get("tokenizer.ggml.add_space_prefix", True))


def sentencepiece_merges(
    tokens: list[str], scores: list[float], types: list[int]
) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's score-ordered merging.

    Every way to write a normal piece as two pieces is a merge, ranked by the
    piece's score (highest first), then the piece's id, then the parts' ids:
    transformers' `SentencePieceExtractor`, which made the models'
    tokenizer.json files.
    """
    ids = {t: i for i, t in enumerate(tokens)}
    ranked: list[tuple[float, int, int, int, str, str]] = []
    for piece, (token, score, kind) in enumerate(zip(tokens, scores, types, strict=True)):
        if kind != NORMAL:
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ids and right in ids:
                ranked.append((-float(score), piece, ids[left], ids[right], left, right))
    ranked.sort(key=lambda m: m[:4])
    return [(left, right) for *_, left, right in ranked]


def _add_special_tokens(
    backend: tokenizers.Tokenizer,
    tokens: list[str],
    types: list[int],
    rstrip: Callable[[str], bool],
) -> None:
    """Control tokens become special (skipped by `skip_special_tokens`); user-defined
    ones (e.g. Qwen's `<tool_call>`) are matched whole in text but kept on decode.
    Tokens `rstrip` picks swallow the whitespace after them."""
    plain: list[str] = []  # special, not normalized, no stripping: what a str is to the backend
    marked: list[AddedToken] = []
    for i, kind in enumerate(types):
        if kind not in ADDED_TYPES:
            continue
        token, strip = tokens[i], rstrip(tokens[i])
        if kind == USER_DEFINED or strip:
            marked.append(
                AddedToken(token, special=kind != USER_DEFINED, normalized=False, rstrip=strip)
            )
        else:
            plain.append(token)
    # Strings skip building an AddedToken object each: a file may pad its vocabulary
    # with ~10^5 control tokens. Each call rebuilds the backend's matcher over all of
    # them, so the second is made only when needed.
    backend.add_special_tokens(plain)
    if marked:
        backend.add_tokens(marked)


def is_added_token(md: Mapping[str, Any], token_id: int) -> bool:
    """Whether `backend_from_gguf` adds this token as one matched whole (by its type)."""
    types = md.get("tokenizer.ggml.token_type")
    return isinstance(types, list) and 0 <= token_id < len(types) and types[token_id] in ADDED_TYPES


def _no_rstrip(token: str) -> bool:
    return False


def _phi3_rstrip(token: str) -> bool:
    """Phi-3's tokenizer.json marks its chat tokens (<|user|>, <|end|>, ...) and
    </s> `rstrip`, so "<|user|>\\nHi" is <|user|> then "Hi"; llama.cpp does the
    same for phi3 models (`LLAMA_TOKEN_ATTR_RSTRIP` in llama-vocab.cpp)."""
    return token not in ("<unk>", "<s>", "<|endoftext|>")
