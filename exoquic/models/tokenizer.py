"""Text <-> token ids, chat templates and streaming decode for a model.

A `Tokenizer` is built from a GGUF file (its BPE vocabulary, merges, special
tokens and chat template) or from a Hugging Face directory (`tokenizer.json`,
`tokenizer_config.json`). Both give identical ids for the same model.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, decoders, models, pre_tokenizers

from exoquic.models.chat_template import CHATML_TEMPLATE, render_chat
from exoquic.models.errors import ModelLoadError
from exoquic.models.gguf_file import GGUFFile
from exoquic.models.hf_loader import read_json

# Tokens that end a turn in common chat formats; they stop generation when the
# model has them as special tokens, whatever its declared eos.
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")
# GGUF token_type value of control (special) tokens.
GGUF_CONTROL_TOKEN = 3
# GGUF `tokenizer.ggml.pre` values whose pre-tokenizer we reproduce. "smollm"
# splits digits one by one before the GPT-2 byte-level split.
_DIGIT_SPLIT_PRE = frozenset({"smollm"})
_PLAIN_PRE = frozenset({"gpt2", "default"})


class Tokenizer:
    """A model's tokenizer, special tokens and chat template.

    `encode` never adds a BOS token: chat templates that want one write it.
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        chat_template: str | None,
        bos_token_id: int | None,
        eos_token_ids: frozenset[int],
    ) -> None:
        self.backend = backend
        self.chat_template = chat_template
        self.bos_token_id = bos_token_id
        self.eos_token_ids = eos_token_ids

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Build from the tokenizer stored in a GGUF file's metadata."""
        gf = GGUFFile.open(path)
        md = gf.metadata
        backend = _backend_from_gguf(gf)
        bos = md.get("tokenizer.ggml.bos_token_id")
        eos = md.get("tokenizer.ggml.eos_token_id")
        return cls(
            backend,
            md.get("tokenizer.chat_template"),
            bos_token_id=None if bos is None else int(bos),
            eos_token_ids=_end_tokens(backend, [] if eos is None else [int(eos)]),
        )

    @classmethod
    def from_hf_dir(cls, directory: str | os.PathLike[str]) -> Tokenizer:
        """Build from a Hugging Face directory (`tokenizer.json`, `tokenizer_config.json`)."""
        root = Path(directory)
        tokenizer_file = root / "tokenizer.json"
        try:
            backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        except Exception as e:  # the Rust side raises plain Exception
            raise ModelLoadError(f"{tokenizer_file}: cannot load tokenizer: {e}") from e
        config_file = root / "tokenizer_config.json"
        tc = read_json(config_file) if config_file.exists() else {}
        if not isinstance(tc, dict):
            raise ModelLoadError(f"{config_file}: expected a JSON object")
        bos = _token_id(backend, tc.get("bos_token"))
        eos = [i for i in [_token_id(backend, tc.get("eos_token"))] if i is not None]
        eos += _generation_eos(root)
        return cls(backend, _hf_chat_template(root, tc), bos, _end_tokens(backend, eos))

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included."""
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    @property
    def bos_token(self) -> str | None:
        return None if self.bos_token_id is None else self.backend.id_to_token(self.bos_token_id)

    @cached_property
    def longest_token_chars(self) -> int:
        """Characters in the longest vocabulary entry, special tokens included.

        For byte-level BPE an entry has one character per byte it stands for,
        so no token covers more characters of text than this.
        """
        vocab = self.backend.get_vocab(with_added_tokens=True)
        return max(map(len, vocab), default=1)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text become their ids.

        Releases the GIL while it works (the batch call does, the single one
        does not), so a long text tokenized in a worker thread leaves the
        event loop running.
        """
        encoding = self.backend.encode_batch_fast([text], add_special_tokens=False)[0]
        return list(encoding.ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """The text of `ids` (special tokens included unless skipped)."""
        return str(self.backend.decode(ids, skip_special_tokens=skip_special_tokens))

    def token_id(self, token: str) -> int | None:
        """The id of a vocabulary entry (e.g. `"<|im_end|>"`), or None."""
        found = self.backend.token_to_id(token)
        return None if found is None else int(found)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt text for a conversation (ChatML when the model ships no template).

        Raises ChatTemplateError when the template rejects the messages.
        """
        eos = min(self.eos_token_ids) if self.eos_token_ids else None
        return render_chat(
            self.chat_template or CHATML_TEMPLATE,
            messages,
            add_generation_prompt,
            tools,
            bos_token=self.bos_token or "",
            eos_token="" if eos is None else self.backend.id_to_token(eos),
        )

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        """A decoder that turns generated ids into text pieces as they arrive."""
        return StreamDecoder(self, skip_special_tokens)


class StreamDecoder:
    """Incremental detokenization that never emits part of a character.

    A token may end in the middle of a multi-byte UTF-8 character (byte-level
    BPE splits emoji across tokens). `push` decodes a short window of recent
    ids and returns only text that can no longer change; the window restarts
    after each emitted piece so the cost per token stays constant.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # window start: ids decoded only as context
        self._read = 0  # ids before this were already emitted as text

    def push(self, token_id: int) -> str:
        """Add one generated id; return the newly completed text (often "")."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        # U+FFFD at the end means the last token stopped inside a character.
        if len(text) > len(before) and not text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return text[len(before) :]
        return ""

    def flush(self) -> str:
        """Text still held back at the end of generation (incomplete bytes become U+FFFD)."""
        before = self._decode(self._ids[self._prefix : self._read])
        text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return text[len(before) :]

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip) if ids else ""


def _backend_from_gguf(gf: GGUFFile) -> tokenizers.Tokenizer:
    """A `tokenizers` BPE tokenizer equal to llama.cpp's for gpt2-style GGUF vocabularies."""
    md = gf.metadata
    kind, pre = md.get("tokenizer.ggml.model"), md.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2" or pre not in _DIGIT_SPLIT_PRE | _PLAIN_PRE:
        raise ModelLoadError(
            f"{gf.path}: unsupported GGUF tokenizer {kind!r} with pre-tokenizer {pre!r} "
            "(supported: gpt2 BPE with smollm/gpt2/default pre-tokenizers)"
        )
    tokens: list[str] = md["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in md.get("tokenizer.ggml.merges", [])]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    backend = tokenizers.Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT_PRE:
        digits = pre_tokenizers.Digits(individual_digits=True)
        backend.pre_tokenizer = pre_tokenizers.Sequence([digits, byte_level])
    else:
        backend.pre_tokenizer = byte_level
    backend.decoder = decoders.ByteLevel()
    types = md.get("tokenizer.ggml.token_type", [])
    special = [tokens[i] for i, t in enumerate(types) if t == GGUF_CONTROL_TOKEN]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    return backend


def _end_tokens(backend: tokenizers.Tokenizer, eos: list[int]) -> frozenset[int]:
    special = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
    extra = [backend.token_to_id(t) for t in END_TOKENS if t in special]
    return frozenset(eos) | {int(i) for i in extra if i is not None}


def _token_id(backend: tokenizers.Tokenizer, token: Any) -> int | None:
    """Id of a tokenizer_config.json token entry (a string or `{"content": ...}`)."""
    if isinstance(token, dict):
        token = token.get("content")
    if not isinstance(token, str):
        return None
    found = backend.token_to_id(token)
    return None if found is None else int(found)


def _generation_eos(root: Path) -> list[int]:
    """eos ids from generation_config.json (an int or a list), if the file exists."""
    path = root / "generation_config.json"
    if not path.exists():
        return []
    value = read_json(path).get("eos_token_id")
    values = value if isinstance(value, list) else [value]
    return [int(v) for v in values if isinstance(v, int)]


def _hf_chat_template(root: Path, tc: dict[str, Any]) -> str | None:
    """The chat template: chat_template.jinja, else tokenizer_config.json's entry."""
    jinja_file = root / "chat_template.jinja"
    if jinja_file.exists():
        return jinja_file.read_text(encoding="utf-8")
    template = tc.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None
