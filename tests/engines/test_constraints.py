"""Structured output: response_format to grammar, and masks on the real tokenizer."""

import json

import numpy as np
import pytest

from exoquic.engines.constraints import ConstraintCompiler, GrammarError, grammar_for
from exoquic.engines.sampling import RequestSampler, SamplingParams
from exoquic.models.registry import bundled_gguf_path
from exoquic.models.tokenizer import Tokenizer

SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "enum": [1, 2]}},
    "required": ["ok", "n"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(bundled_gguf_path())


@pytest.fixture(scope="module")
def compiler(tokenizer: Tokenizer) -> ConstraintCompiler:
    return ConstraintCompiler(tokenizer)


def schema_format(schema: object, strict: bool = True) -> dict[str, object]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": strict}}


def test_text_needs_no_grammar() -> None:
    assert grammar_for({"type": "text"}) is None


def test_an_invalid_schema_is_refused() -> None:
    with pytest.raises(GrammarError, match="strin"):
        grammar_for(schema_format({"type": "strin"}))


def test_a_huge_schema_is_refused() -> None:
    properties = {f"p{i}_{'x' * 100}": {"type": "string"} for i in range(12_000)}
    with pytest.raises(GrammarError, match="too large"):
        grammar_for(schema_format({"type": "object", "properties": properties}))


def test_strict_refuses_keywords_it_cannot_enforce_and_lax_ignores_them() -> None:
    schema = {"type": "string", "format": "no-such-format"}
    with pytest.raises(GrammarError, match="no-such-format"):
        grammar_for(schema_format(schema, strict=True))
    assert grammar_for(schema_format(schema, strict=False))


def generate(
    tokenizer: Tokenizer, compiler: ConstraintCompiler, grammar: str, seed: int
) -> list[int]:
    """Draw from noise under the grammar until an end token (the grammar ends the
    output: it allows an end token only once the value is complete)."""
    rng = np.random.default_rng(seed)
    params = SamplingParams(temperature=1.0, seed=seed, grammar=grammar)
    sampler = RequestSampler(params, compiler.constraint(grammar))
    sampler.observe(0, 0, [1, 2, 3])
    vocab = tokenizer.vocab_size
    drawn: list[int] = []
    for step in range(60):
        if step:
            sampler.observe(step, 2 + step, [drawn[-1]])
        logits = rng.normal(size=vocab).astype(np.float32)
        logits[sorted(tokenizer.eos_token_ids)] += 20.0  # end as soon as allowed
        drawn.append(sampler.sample(logits, step))
        if drawn[-1] in tokenizer.eos_token_ids:
            return drawn[:-1]
    raise AssertionError(f"no end after 60 tokens: {tokenizer.decode(drawn)!r}")


def test_masked_noise_is_valid_json_of_the_schema(
    tokenizer: Tokenizer, compiler: ConstraintCompiler
) -> None:
    grammar = grammar_for(schema_format(SCHEMA))
    assert grammar is not None
    for seed in range(3):
        value = json.loads(tokenizer.decode(generate(tokenizer, compiler, grammar, seed)))
        assert set(value) == {"ok", "n"} and isinstance(value["ok"], bool)
        assert value["n"] in (1, 2)


def test_json_object_gives_an_object(tokenizer: Tokenizer, compiler: ConstraintCompiler) -> None:
    grammar = grammar_for({"type": "json_object"})
    assert grammar is not None
    text = tokenizer.decode(generate(tokenizer, compiler, grammar, 7))
    assert isinstance(json.loads(text), dict)


def test_masks_depend_only_on_the_tokens_asked_about(
    tokenizer: Tokenizer, compiler: ConstraintCompiler
) -> None:
    grammar = grammar_for(schema_format(SCHEMA))
    assert grammar is not None
    prefix = tokenizer.encode('{"ok": true, "n": ')
    walked = compiler.constraint(grammar)
    walked.allowed(prefix)
    walked.allowed(tokenizer.encode('{"ok": false'))  # another history: rolls back
    fresh = compiler.constraint(grammar)
    np.testing.assert_array_equal(walked.allowed(prefix), fresh.allowed(prefix))
    allowed = np.flatnonzero(fresh.allowed(prefix))
    assert {tokenizer.decode([int(t)]) for t in allowed} <= {"1", "2"}


def test_output_outside_the_grammar_is_an_error(
    tokenizer: Tokenizer, compiler: ConstraintCompiler
) -> None:
    grammar = grammar_for({"type": "json_object"})
    assert grammar is not None
    with pytest.raises(GrammarError):
        compiler.constraint(grammar).allowed(tokenizer.encode("hello"))
