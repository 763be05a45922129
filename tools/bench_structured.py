"""Decode speed with and without a JSON schema, against a running node.

    uv run python tools/bench_structured.py [--url http://127.0.0.1:8000] [--rounds 5]
    uv run python tools/bench_structured.py --sampler

Streams greedy chat completions and measures decode tokens per second: the
tokens after the first, over the time from the first token to the last (the
prefill and the schema's compilation are not decode). The schema asks for a
long array, so that constrained replies run as long as the plain ones; each
reply's `usage` gives its token count.

`--sampler` measures, without a node, what a constraint adds at the sampling
node: the time to pick a token from 49,152 logits plainly and under the schema
(mask included), along a valid reply's tokens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import httpx
import numpy as np

from exoquic.engines.constraints import ConstraintCompiler, grammar_for
from exoquic.engines.sampling import RequestSampler, SamplingParams
from exoquic.models.registry import DEFAULT_MODEL_ID, bundled_gguf_path
from exoquic.models.tokenizer import Tokenizer

SCHEMA = {
    "type": "object",
    "properties": {
        "cities": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "country": {"type": "string"}},
                "required": ["name", "country"],
            },
            "minItems": 40,
        }
    },
    "required": ["cities"],
}
QUESTION = "List as many cities of the world as you can, with their countries."


def decode_rate(url: str, tokens: int, response_format: dict[str, Any] | None) -> float:
    """Decode tokens per second of one streamed reply of up to `tokens` tokens."""
    body: dict[str, Any] = {
        "model": DEFAULT_MODEL_ID,
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if response_format is not None:
        body["response_format"] = response_format
    first = last = 0.0
    used = 0
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                used = event["usage"]["completion_tokens"]
            elif event["choices"] and event["choices"][0]["delta"].get("content"):
                last = time.perf_counter()
                first = first or last
    return (used - 1) / (last - first)


def sampler_costs(temperature: float) -> tuple[float, float]:
    """Median seconds per token to sample plainly and under SCHEMA, walking a
    valid reply (its tokens fed back as each next step's input)."""
    tokenizer = Tokenizer.from_gguf(bundled_gguf_path())
    reply = json.dumps({"cities": [{"name": f"City {i}", "country": "Land"} for i in range(40)]})
    tokens = tokenizer.encode(reply)
    logits = np.random.default_rng(0).normal(size=tokenizer.vocab_size).astype(np.float32)
    schema_format = {"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}}
    grammar = grammar_for(schema_format)
    assert grammar is not None
    compiler = ConstraintCompiler(tokenizer)
    compiler.constraint(grammar)  # the one-off tokenizer preparation is not per token
    costs: dict[str, list[float]] = {"plain": [], "json_schema": []}
    for name in costs:
        params = SamplingParams(temperature=temperature, seed=1)
        constraint = None
        if name == "json_schema":
            params = SamplingParams(temperature=temperature, seed=1, grammar=grammar)
            constraint = compiler.constraint(grammar)
        sampler = RequestSampler(params, constraint)
        sampler.observe(0, 0, [1])
        for step in range(len(tokens)):
            if step:
                sampler.observe(step, step, [tokens[step - 1]])
            start = time.perf_counter()
            sampler.sample(logits, step)
            costs[name].append(time.perf_counter() - start)
    return statistics.median(costs["plain"]), statistics.median(costs["json_schema"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--sampler", action="store_true", help="time the sampling alone")
    args = parser.parse_args()
    if args.sampler:
        for temperature in (0.0, 0.7):
            plain, constrained = sampler_costs(temperature)
            print(f"temperature {temperature}: sampling {plain * 1e6:.0f} us plain, "
                  f"{constrained * 1e6:.0f} us under the schema (median per token)")  # fmt: skip
        return
    schema_format = {"type": "json_schema", "json_schema": {"name": "cities", "schema": SCHEMA}}
    decode_rate(args.url, 8, schema_format)  # warm up: the node prepares its grammar tokenizer
    rates: dict[str, list[float]] = {"plain": [], "json_schema": []}
    for _ in range(args.rounds):  # interleaved, so that load on the machine hits both alike
        rates["plain"].append(decode_rate(args.url, args.tokens, None))
        rates["json_schema"].append(decode_rate(args.url, args.tokens, schema_format))
    plain, constrained = (statistics.median(rates[k]) for k in ("plain", "json_schema"))
    for name, values in rates.items():
        print(f"{name:12} median {statistics.median(values):6.1f} tok/s  runs {values}")
    print(f"constrained costs {100 * (1 - constrained / plain):.1f}% of plain decode speed")
    # Each round's pair ran back to back: their ratio is less exposed to load that
    # comes and goes on a shared machine than the two medians are.
    ratios = [c / p for p, c in zip(rates["plain"], rates["json_schema"], strict=True)]
    print(f"paired: constrained costs {100 * (1 - statistics.median(ratios)):.1f}% (median of "
          f"{len(ratios)} rounds' ratios)")  # fmt: skip


if __name__ == "__main__":
    main()
