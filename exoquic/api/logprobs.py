"""Token log-probabilities in OpenAI's response formats (pure, no I/O).

Chat completions: `choices[].logprobs = {"content": [{token, logprob, bytes,
top_logprobs: [{token, logprob, bytes}]}], "refusal": null}`. Text
completions: `choices[].logprobs = {tokens, token_logprobs, top_logprobs,
text_offset}`, where each `top_logprobs` entry maps token text to its
log-probability and, as vLLM does, holds the chosen token besides the best
alternatives (so `logprobs: 0` still names it, and a harness can tell whether
the chosen token was the most likely by comparing it with the entry's maximum).
A token that holds part of a UTF-8 character shows its bytes as `\\xNN`
escapes in `token`; `bytes` has them exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from exoquic.engines.logprobs import TokenLogprob


class TokenTexts(Protocol):
    def token_bytes(self, token_id: int) -> bytes: ...


def token_text(tokenizer: TokenTexts, token_id: int) -> str:
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="backslashreplace")


def chat_logprobs(tokenizer: TokenTexts, scored: Sequence[TokenLogprob]) -> dict[str, Any]:
    """A chat choice's (or stream chunk's) `logprobs` object."""

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        raw = tokenizer.token_bytes(token_id)
        text = raw.decode("utf-8", errors="backslashreplace")
        return {"token": text, "logprob": logprob, "bytes": list(raw)}

    content = [
        {
            **entry(item.token_id, item.logprob),
            "top_logprobs": [entry(token, logprob) for token, logprob in item.top],
        }
        for item in scored
    ]
    return {"content": content, "refusal": None}


class TextLogprobs:
    """A text completion's `logprobs` object, built in pieces (a stream's chunks)
    whose `text_offset`s continue from `offset`, the characters before them."""

    def __init__(self, tokenizer: TokenTexts, offset: int = 0) -> None:
        self.tokenizer = tokenizer
        self.offset = offset

    def format(self, scored: Sequence[TokenLogprob], unscored: int | None = None) -> dict[str, Any]:
        """The object for `scored`, after the token `unscored` (an echoed
        prompt's first token, which has no log-probability: its token_logprob
        and top_logprobs are null) when given."""
        body: dict[str, list[Any]] = {
            "tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": [],
        }  # fmt: skip
        if unscored is not None:
            self._add(body, token_text(self.tokenizer, unscored), None, None)
        for item in scored:
            text = token_text(self.tokenizer, item.token_id)
            top = {text: item.logprob}  # the chosen token first, then the alternatives
            for token, logprob in item.top:
                top.setdefault(token_text(self.tokenizer, token), logprob)
            self._add(body, text, item.logprob, top)
        return body

    def _add(self, body: dict[str, list[Any]], text: str, logprob: float | None, top: Any) -> None:
        body["tokens"].append(text)
        body["token_logprobs"].append(logprob)
        body["top_logprobs"].append(top)
        body["text_offset"].append(self.offset)
        self.offset += len(text)
