"""Text <-> token ids, chat templates and streaming decode for a model.

A `Tokenizer` is built from a GGUF file (its byte-level BPE or SentencePiece
vocabulary, rebuilt by gguf_tokenizer.py, special tokens, end tokens and chat
template) or from a Hugging Face directory (`tokenizer.json`,
`tokenizer_config.json`, `generation_config.json`). Both give identical ids
for the same model.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import tokenizers

from exoquic.models.chat_template import CHATML_TEMPLATE, render_chat
from exoquic.models.errors import ModelLoadError
from exoquic.models.gguf_file import GGUFFile
from exoquic.models.gguf_tokenizer import (
    SPACE as SPACE_PIECE,
)
from exoquic.models.gguf_tokenizer import (
    backend_from_gguf,
    has_dummy_prefix,
    is_added_token,
)
from exoquic.models.hf_loader import read_json

# Tokens that end a turn in the chat formats of the registry's families
# (ChatML/Qwen, Llama 3's end of text, turn and message, Gemma, Phi-3,
# SentencePiece's eos): they stop generation when the model has them as added
# tokens, whatever its declared eos (Llama 3.1's generation_config.json lists
# three; its GGUF declares eos and eot as <|eot_id|>).
END_TOKENS = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<end_of_turn>",
    "<|end|>",
    "</s>",
)
# GGUF keys naming end tokens: end of sequence, end of turn, end of message.
GGUF_END_KEYS = (
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.eot_token_id",
    "tokenizer.ggml.eom_token_id",
)


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
        *,
        eos_token_id: int | None = None,
        add_bos_token: bool = False,
        dummy_prefix: bool = False,
        longest_token_chars: int | None = None,
    ) -> None:
        self.backend = backend
        self.chat_template = chat_template
        self.bos_token_id = bos_token_id
        # Every id that ends generation: eos, end of turn, end of message.
        self.eos_token_ids = eos_token_ids
        # The declared eos (the template's `eos_token`); the smallest end id if none.
        self.eos_token_id = (
            eos_token_id if eos_token_id is not None else min(eos_token_ids, default=None)
        )
        # Whether the model's own tokenizer starts a raw prompt with BOS
        # (`tokenizer.ggml.add_bos_token`); chat templates write their own.
        self.add_bos_token = add_bos_token
        # SentencePiece puts a space before the text even when it starts with
        # one; the backend's Metaspace only when it does not (see gguf_tokenizer).
        self._dummy_prefix = dummy_prefix
        self._longest_token_chars = longest_token_chars  # None: ask the backend

    @classmethod
    def from_gguf(cls, path: str | os.PathLike[str]) -> Tokenizer:
        """Build from the tokenizer stored in a GGUF file's metadata."""
        gf = GGUFFile.open_cached(path)
        md = gf.metadata
        backend = backend_from_gguf(str(gf.path), md)
        bos = md.get("tokenizer.ggml.bos_token_id")
        ends = [int(md[k]) for k in GGUF_END_KEYS if md.get(k) is not None]
        return cls(
            backend,
            md.get("tokenizer.chat_template"),
            bos_token_id=None if bos is None else int(bos),
            eos_token_ids=_end_tokens(backend, ends, lambda i: is_added_token(md, i)),
            eos_token_id=ends[0] if ends else None,
            add_bos_token=bool(md.get("tokenizer.ggml.add_bos_token", False)),
            dummy_prefix=has_dummy_prefix(md),
            # The vocabulary is at hand here (added tokens are entries of it): the
            # backend would build a dict of all of it to answer.
            longest_token_chars=max(map(len, md["tokenizer.ggml.tokens"])),
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
        added = backend.get_added_tokens_decoder()
        return cls(
            backend,
            _hf_chat_template(root, tc),
            bos,
            _end_tokens(backend, eos, added.__contains__),
            eos_token_id=eos[0] if eos else None,
            add_bos_token=tc.get("add_bos_token") is True,
        )

    @cached_property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included.

        Kept: the backend builds a map of its whole vocabulary to count it (~0.1 s
        for 128k tokens), and requests ask for it; no token is added after loading.
        """
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
        if self._longest_token_chars is not None:
            return self._longest_token_chars
        vocab = self.backend.get_vocab(with_added_tokens=True)
        return max(map(len, vocab), default=1)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; special tokens written in the text become their ids.

        Releases the GIL while it works (the batch call does, the single one
        does not), so a long text tokenized in a worker thread leaves the
        event loop running.
        """
        if self._dummy_prefix and text.startswith((" ", SPACE_PIECE)):
            # The pre-tokenizer adds no dummy prefix to a text that already
            # starts with a space (or the "▁" it stands for); SentencePiece does.
            text = " " + text
        encoding = self.backend.encode_batch_fast([text], add_special_tokens=False)[0]
        return list(encoding.ids)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        """The text of `ids` (special tokens included unless skipped)."""
        return str(self.backend.decode(ids, skip_special_tokens=skip_special_tokens))

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for, alone (it may hold part of a UTF-8
        character): byte-level BPE pieces mapped back through GPT-2's byte
        alphabet, SentencePiece's `<0xNN>` pieces as that byte and its `▁` as a
        space. An id outside the vocabulary gives b""."""
        piece = self.backend.id_to_token(token_id)
        if piece is None:
            return b""
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                pass  # a piece that only looks like a byte
        byte_of = _gpt2_bytes()
        if isinstance(self.backend.decoder, tokenizers.decoders.ByteLevel) and all(
            char in byte_of for char in piece
        ):
            return bytes(byte_of[char] for char in piece)
        return piece.replace("\u2581", " ").encode()

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
        eos = self.eos_token_id
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


@cache
def _gpt2_bytes() -> dict[str, int]:
    """GPT-2's byte-level alphabet backwards: the character standing for each
    byte (printable bytes stand for themselves, the others for chars from 256 on)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    shifted = [b for b in range(256) if b not in printable]
    chars = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(shifted)}
    return {char: byte for byte, char in chars.items()}


def _end_tokens(
    backend: tokenizers.Tokenizer, eos: list[int], is_added: Callable[[int], bool]
) -> frozenset[int]:
    """`eos` and the END_TOKENS the vocabulary has as added tokens (by id: asking
    the backend for all its added tokens takes a while when there are 10^5 of them);
    a plain vocabulary entry spelled "</s>" is just text."""
    ids = [backend.token_to_id(t) for t in END_TOKENS]
    return frozenset(eos) | {int(i) for i in ids if i is not None and is_added(int(i))}


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
