"""Structured output: the grammar a `response_format` asks for, and its token masks.

The API turns `{"type": "json_object"}` or `{"type": "json_schema", ...}` into an
llguidance grammar (`grammar_for`, checked without a tokenizer, so a bad schema
is a 400 before any work). The grammar travels with the request's sampling
parameters to the sampling node, which compiles it against the model's
tokenizer (`ConstraintCompiler`) and masks each step's logits to the tokens the
grammar allows. Why llguidance rather than xgrammar or outlines-core: docs/api.md.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import llguidance
import numpy as np

from exoquic.models.tokenizer import Tokenizer

if TYPE_CHECKING:  # only in llguidance's type stubs
    from llguidance._lib import JsonCompileOptions


# JSON as models usually write it: one space after ':' and ',', no free whitespace
# (a small model let loose between tokens can emit newlines until max_tokens).
def _json_options(strict: bool) -> JsonCompileOptions:
    return {
        "whitespace_flexible": False,
        "item_separator": ", ",
        "key_separator": ": ",
        "lenient": not strict,
    }


# What a request's grammar may weigh (it travels in `Forward.sampling`, whose
# last shard refuses more): far beyond any schema people write by hand or with pydantic.
MAX_GRAMMAR_CHARS = 1 << 20


class GrammarError(ValueError):
    """The response_format asks for something that cannot be compiled."""


def grammar_for(response_format: dict[str, Any]) -> str | None:
    """The llguidance grammar (JSON text) of an OpenAI `response_format` (already
    shaped as one of the three types); None for `{"type": "text"}`.

    `strict: true` refuses schema keywords llguidance cannot enforce; without
    it they are ignored (OpenAI's non-strict mode is best effort too).
    """
    kind = response_format["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        schema: Any = {"type": "object"}
        strict = True
    else:
        spec = response_format["json_schema"]
        schema = spec.get("schema", {})
        strict = bool(spec.get("strict"))
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            schema,
            overrides=_json_options(strict),
        )
    except ValueError as exc:
        raise GrammarError(f"the JSON schema cannot be used: {exc}") from exc
    if len(grammar) > MAX_GRAMMAR_CHARS:
        raise GrammarError(f"the JSON schema is too large (over {MAX_GRAMMAR_CHARS} characters)")
    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error:
        raise GrammarError(f"the JSON schema cannot be used: {error}")
    return grammar


class ConstraintCompiler:
    """Compiles grammars against one model's tokenizer (at the sampling node).

    Preparing llguidance's view of a 49k-token vocabulary takes about half a
    second: it happens once, at the first constrained request, in a thread at
    its origin (`Node.prepare_grammars`); a sampling node that is not the
    origin prepares it inline at its first such request.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._lock = threading.Lock()
        self._ll_tokenizer: llguidance.LLTokenizer | None = None

    @property
    def ll_tokenizer(self) -> llguidance.LLTokenizer:
        with self._lock:
            if self._ll_tokenizer is None:
                self._ll_tokenizer = llguidance.LLTokenizer(
                    self._tokenizer.backend.to_str(),
                    eos_token=sorted(self._tokenizer.eos_token_ids),
                )
            return self._ll_tokenizer

    def constraint(self, grammar: str) -> GrammarConstraint:
        """A fresh matcher for one request; GrammarError when it does not compile."""
        matcher = llguidance.LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(f"the grammar does not compile: {matcher.get_error()}")
        return GrammarConstraint(matcher, self.ll_tokenizer.vocab_size)


class GrammarConstraint:
    """One request's grammar state: the tokens allowed after a given output.

    The matcher follows the output incrementally; when asked about another
    history (a replayed step), it rolls back to the common prefix first, so the
    answer depends only on the tokens asked about.
    """

    def __init__(self, matcher: llguidance.LLMatcher, vocab_size: int) -> None:
        self._matcher = matcher
        self._vocab_size = vocab_size
        self._consumed: list[int] = []

    def allowed(self, generated: Sequence[int]) -> np.ndarray:
        self._follow(generated)
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(bits, bitorder="little")[: self._vocab_size].astype(bool)

    def _follow(self, generated: Sequence[int]) -> None:
        common = 0
        for mine, theirs in zip(self._consumed, generated, strict=False):
            if mine != theirs:
                break
            common += 1
        if common < len(self._consumed):
            self._matcher.rollback(len(self._consumed) - common)
            del self._consumed[common:]
        new = [int(t) for t in generated[common:]]
        if new and not self._matcher.consume_tokens(new):
            raise GrammarError(f"the output left the grammar: {self._matcher.get_error()}")
        self._consumed.extend(new)
