"""Compare constrained-decoding libraries on the default model's tokenizer.

For llguidance, xgrammar and outlines-core: the time to prepare the tokenizer,
to compile a JSON schema, and the cost per token of computing the allowed-token
mask while walking a valid document token by token. Only llguidance is an
exoquic dependency; run the comparison with the others added for the run:

    uv run --with xgrammar --with outlines-core python tools/compare_grammar_libs.py

(xgrammar pulls in torch and transformers, which is one of the findings.)
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from exoquic.models.registry import bundled_gguf_path
from exoquic.models.tokenizer import Tokenizer

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "email": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "email", "tags", "active"],
    "additionalProperties": False,
}
DOCUMENT = (
    '{"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", '
    '"tags": ["mathematics", "poetry", "engines"], "active": true}'
)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def walk(
    tokens: list[int], mask: Callable[[], None], advance: Callable[[int], None]
) -> list[float]:
    """Seconds per mask computation along the document's tokens."""
    costs = []
    for token in tokens:
        start = time.perf_counter()
        mask()
        costs.append(time.perf_counter() - start)
        advance(token)
    return costs


def bench_llguidance(tok: Tokenizer, tokens: list[int]) -> dict[str, Any]:
    import llguidance
    import llguidance.numpy

    eos = sorted(tok.eos_token_ids)
    ll_tok, prepare = timed(lambda: llguidance.LLTokenizer(tok.backend.to_str(), eos_token=eos))
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA)
    matcher, compile_s = timed(lambda: llguidance.LLMatcher(ll_tok, grammar))
    bitmask = llguidance.numpy.allocate_token_bitmask(1, ll_tok.vocab_size)
    costs = walk(
        tokens,
        lambda: llguidance.numpy.fill_next_token_bitmask(matcher, bitmask),
        lambda t: matcher.consume_token(t) or None,
    )
    assert not matcher.is_error(), matcher.get_error()
    return {"prepare_s": prepare, "compile_s": compile_s, "costs": costs}


def bench_xgrammar(tok: Tokenizer, tokens: list[int]) -> dict[str, Any]:
    import xgrammar
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=tok.backend)
    vocab = tok.backend.get_vocab_size()
    eos = sorted(tok.eos_token_ids)
    info, prepare = timed(
        lambda: xgrammar.TokenizerInfo.from_huggingface(hf, vocab_size=vocab, stop_token_ids=eos)
    )
    compiler = xgrammar.GrammarCompiler(info)
    compiled, compile_s = timed(lambda: compiler.compile_json_schema(json.dumps(SCHEMA)))
    matcher = xgrammar.GrammarMatcher(compiled)
    bitmask = xgrammar.allocate_token_bitmask(1, vocab)
    costs = walk(
        tokens,
        lambda: matcher.fill_next_token_bitmask(bitmask) or None,
        lambda t: matcher.accept_token(t) or None,
    )
    return {"prepare_s": prepare, "compile_s": compile_s, "costs": costs}


def bench_outlines_core(tok: Tokenizer, tokens: list[int]) -> dict[str, Any]:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    eos = min(tok.eos_token_ids)

    def vocabulary() -> Any:
        by_bytes: dict[bytes, list[int]] = {}
        for token_id in range(tok.backend.get_vocab_size()):
            if token_id in tok.eos_token_ids:
                continue
            text = tok.backend.decode([token_id], skip_special_tokens=False)
            by_bytes.setdefault(text.encode(), []).append(token_id)
        return Vocabulary(eos, by_bytes)

    vocab, prepare = timed(vocabulary)
    regex = build_regex_from_schema(json.dumps(SCHEMA))
    index, compile_s = timed(lambda: Index(regex, vocab))
    guide = Guide(index)
    mask = np.zeros((tok.backend.get_vocab_size() + 31) // 32, dtype=np.int32)
    costs = walk(
        tokens,
        lambda: guide.write_mask_into(mask.ctypes.data, mask.size, 4),
        lambda t: guide.advance(t) and None,
    )
    return {"prepare_s": prepare, "compile_s": compile_s, "costs": costs}


def main() -> None:
    tok = Tokenizer.from_gguf(bundled_gguf_path())
    tokens = tok.encode(DOCUMENT)
    print(f"vocabulary {tok.backend.get_vocab_size()} tokens; document {len(tokens)} tokens")
    benches = {"llguidance": bench_llguidance, "xgrammar": bench_xgrammar,
               "outlines-core": bench_outlines_core}  # fmt: skip
    for name, bench in benches.items():
        try:
            result = bench(tok, tokens)
        except ImportError as exc:
            print(f"{name:14} not installed ({exc.name})")
            continue
        costs = result["costs"]
        print(
            f"{name:14} tokenizer {result['prepare_s'] * 1e3:8.1f} ms  "
            f"compile {result['compile_s'] * 1e3:8.1f} ms  "
            f"mask median {statistics.median(costs) * 1e6:7.1f} us  "
            f"max {max(costs) * 1e6:8.1f} us"
        )


if __name__ == "__main__":
    main()
