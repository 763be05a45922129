"""Benchmark rings of 1, 2 and 3 `exoquic up` processes on this machine (loopback).

    uv run python tools/bench_ring.py [--engine mlx] [--nodes 1,2,3] [--tokens 32]
                                      [--concurrency 1,4,8] [--prompt-tokens 512]
                                      [--repeats 3] [--json FILE] [--pin]

For each ring size it reports:

- decode tok/s of one request (streamed; time between its first and last
  token, so the prompt's prefill is left out), after a warm-up request and
  warm-up rounds that pass through every batch size (engines that trace a
  step per shape, like tinygrad, would otherwise be timed tracing);
- aggregate tok/s with 1, 4 and 8 requests at once (all completion tokens
  over the wall time, prefill included), origins spread over the nodes, and
  the steady decode rate while all of them were decoding (no prefill);
- time to first token of a long prompt (`--prompt-tokens`, about 512 by
  default): its prefill, which a ring pipelines chunk by chunk;
- where one decode step's time goes, from the nodes' counters in
  `/v1/topology` (`stats`): engine compute on every node, message encoding
  and decoding, and the rest per network hop (transport: QUIC, trio, the
  kernel's loopback, and waiting for the other process to be scheduled).

Node processes are started with tests/orchestration/ring_nodes.py (the ring
tests' launcher), each with its own EXOQUIC_HOME in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "orchestration"))
from ring_nodes import RingNode, make_nodes, running, wait_serving

MODEL = "smollm2-135m-instruct"
# About 10 tokens, repeated to make a long prompt.
LONG_PROMPT_PIECE = "The quick brown fox jumps over the lazy dog again. "
# Prompts whose greedy continuations run long (few early end tokens).
PROMPTS = [
    "Count from one to one hundred: one, two, three,",
    "List the months of the year: January, February,",
    "The alphabet is A, B, C, D,",
    "Here is a long story about a dragon. Once upon a time,",
    "Numbers: 1, 2, 3, 4, 5,",
    "Days of the week: Monday, Tuesday,",
    "Planets of the solar system: Mercury, Venus,",
    "Colors of the rainbow: red, orange,",
]


async def stream(
    client: httpx.AsyncClient, node: RingNode, prompt: str, tokens: int
) -> dict[str, Any]:
    """One streamed greedy completion: token count and the times of its chunks."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": tokens, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    started = time.perf_counter()
    times: list[float] = []
    count = prompt_tokens = 0
    async with client.stream("POST", f"{node.url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if "error" in data:
                raise RuntimeError(data["error"]["message"])
            if data.get("usage"):
                count = data["usage"]["completion_tokens"]
                prompt_tokens = data["usage"]["prompt_tokens"]
            elif data["choices"] and data["choices"][0]["text"]:
                times.append(time.perf_counter())
    return {"started": started, "times": times, "tokens": count, "prompt_tokens": prompt_tokens}


def counters(nodes: list[RingNode]) -> list[dict[str, Any]]:
    return [node.topology()["stats"] for node in nodes]


def hop_split(before: list[dict[str, Any]], after: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Per decode step, in ms: the origin's step time, compute and codec summed
    over the nodes, and what remains per network hop (transport)."""

    def delta(i: int, group: str, key: str) -> float:
        return float(after[i][group][key] - before[i][group][key])

    steps = delta(0, "ring", "steps")
    if steps == 0:
        return {}
    step = delta(0, "ring", "step_seconds") / steps
    compute = sum(delta(i, "ring", "compute_seconds") for i in range(n)) / steps
    codec = (
        sum(
            delta(i, "links", "encode_seconds") + delta(i, "links", "decode_seconds")
            for i in range(n)
        )
        / steps
    )
    hops = n if n > 1 else 0  # hidden states around the ring, then the token back
    rest = step - compute - codec
    return {
        "step_ms": round(step * 1000, 2),
        "compute_ms": round(compute * 1000, 2),
        "codec_ms": round(codec * 1000, 3),
        "hops": hops,
        "transport_ms_per_hop": round(rest / hops * 1000, 3) if hops else None,
        "local_overhead_ms": round(rest * 1000, 3) if not hops else None,
    }


async def run_concurrent(
    client: httpx.AsyncClient, nodes: list[RingNode], level: int, tokens: int, stagger: int = 0
) -> list[dict[str, Any]]:
    """`level` requests at once, origins spread over the nodes; request i asks for
    `tokens + i * stagger` tokens. Their `stream` results."""
    runs: list[dict[str, Any]] = []

    async def one(i: int) -> None:
        node, prompt = nodes[i % len(nodes)], PROMPTS[i % len(PROMPTS)]
        runs.append(await stream(client, node, prompt, tokens + i * stagger))

    async with trio.open_nursery() as nursery:
        for i in range(level):
            nursery.start_soon(one, i)
    return runs


def steady_decode_rate(runs: list[dict[str, Any]]) -> float | None:
    """Tokens per second over the window in which every request was decoding
    (after the last one's first token, before the first one's last): the
    batched decode rate, without the prefills."""
    start = max(run["times"][0] for run in runs)
    end = min(run["times"][-1] for run in runs)
    if end <= start:
        return None
    count = sum(sum(1 for t in run["times"] if start < t <= end) for run in runs)
    return round(count / (end - start), 2)


async def bench_ring(
    nodes: list[RingNode], tokens: int, levels: list[int], repeats: int, prompt_tokens: int
) -> dict[str, Any]:
    """Every figure is the median of `repeats` rounds (this machine's speed wanders)."""
    async with httpx.AsyncClient(timeout=900) as client:
        await stream(client, nodes[0], PROMPTS[0], 4)  # warm up (kernels, caches)
        # Warm up every batch size (engines trace a step per size): requests that
        # end one after another shrink the batch from the largest level down to 1.
        await run_concurrent(client, nodes, max(levels), 8, stagger=4)
        await run_concurrent(client, nodes, max(levels), 8, stagger=4)
        rounds = [
            await bench_round(client, nodes, tokens, levels, prompt_tokens) for _ in range(repeats)
        ]
        stats = await trio.to_thread.run_sync(counters, nodes)
    result: dict[str, Any] = {"nodes": len(nodes), "repeats": repeats}
    result["single_decode_tok_s"] = _median([r["single"] for r in rounds])
    result["single_decode_tok_s_all"] = [r["single"] for r in rounds]
    result["single_tokens"] = rounds[0]["single_tokens"]
    if prompt_tokens:
        result["long_prompt_tokens"] = rounds[0]["long_prompt_tokens"]
        result["long_prompt_ttft_s"] = _median([r["long_prompt_ttft_s"] for r in rounds])
    splits = [r["hop_split"] for r in rounds]
    result["hop_split"] = {key: _median([sp[key] for sp in splits]) for key in splits[0]}
    for name in ("aggregate_tok_s", "steady_decode_tok_s"):
        result[name] = {
            str(level): _median([r[name][str(level)] for r in rounds]) for level in levels
        }
    result["largest_batch"] = max(s["worker"]["largest_batch"] for s in stats)
    return result


async def bench_round(
    client: httpx.AsyncClient,
    nodes: list[RingNode],
    tokens: int,
    levels: list[int],
    prompt_tokens: int,
) -> dict[str, Any]:
    n = len(nodes)
    before = await trio.to_thread.run_sync(counters, nodes)
    solo = await stream(client, nodes[0], PROMPTS[0], tokens)
    after = await trio.to_thread.run_sync(counters, nodes)
    times = solo["times"]
    result: dict[str, Any] = {
        "single": round((len(times) - 1) / (times[-1] - times[0]), 2),
        "single_tokens": solo["tokens"],
        "hop_split": hop_split(before, after, n),
    }
    if prompt_tokens:
        # A fresh text each round, so no cache could serve it.
        text = f"Round {time.time()}. " + LONG_PROMPT_PIECE * (prompt_tokens // 10)
        long = await stream(client, nodes[0], text, 1)
        result["long_prompt_tokens"] = long["prompt_tokens"]
        result["long_prompt_ttft_s"] = round(long["times"][0] - long["started"], 3)
    aggregate, steady = {}, {}
    for level in levels:
        started = time.perf_counter()
        runs = await run_concurrent(client, nodes, level, tokens)
        wall = time.perf_counter() - started
        total = sum(run["tokens"] for run in runs)
        aggregate[str(level)] = round(total / wall, 2)
        steady[str(level)] = steady_decode_rate(runs)
    result["aggregate_tok_s"] = aggregate
    result["steady_decode_tok_s"] = steady
    return result


def _median(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-ring-") as root:
        for n in args.nodes:
            names = [f"n{i}" for i in range(n)]
            nodes = make_nodes(Path(root) / f"ring{n}", names, [args.engine] * n)
            if args.pin:
                for i, node in enumerate(nodes):
                    node.cpu = i % os.cpu_count()  # type: ignore[operator]
            with running(nodes):
                started = time.perf_counter()
                wait_serving(nodes, n, timeout=1800)
                ready = time.perf_counter() - started
                result = trio.run(
                    bench_ring,
                    nodes,
                    args.tokens,
                    args.concurrency,
                    args.repeats,
                    args.prompt_tokens,
                )
                result["startup_s"] = round(ready, 1)
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def report(results: list[dict[str, Any]]) -> None:
    base = results[0]["single_decode_tok_s"] if results and results[0]["nodes"] == 1 else None
    levels = list(results[0]["aggregate_tok_s"])
    print("\nnodes  single tok/s  (vs 1 node)  " + "  ".join(f"agg@{n}" for n in levels)
          + "  " + "  ".join(f"dec@{n}" for n in levels)
          + "   step ms  compute  codec  transport/hop  ttft s (prompt)")  # fmt: skip
    for r in results:
        ratio = f"{r['single_decode_tok_s'] / base:6.0%}" if base else "   -  "
        agg = "  ".join(f"{v:6.2f}" for v in r["aggregate_tok_s"].values())
        agg += "  " + "  ".join(
            f"{v:6.2f}" if v is not None else "     -" for v in r["steady_decode_tok_s"].values()
        )
        split = r["hop_split"]
        hop = split.get("transport_ms_per_hop")
        ttft = r.get("long_prompt_ttft_s")
        long = f"{ttft:6.2f} ({r['long_prompt_tokens']})" if ttft is not None else "-"
        print(
            f"{r['nodes']:5d}  {r['single_decode_tok_s']:12.2f}  {ratio:>11}  {agg}   "
            f"{split.get('step_ms', 0):7.1f}  {split.get('compute_ms', 0):7.1f}  "
            f"{split.get('codec_ms', 0):5.2f}  {hop if hop is not None else '-':>13}  {long}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="mlx", choices=("mlx", "tinygrad"))
    parser.add_argument("--nodes", default="1,2,3", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument(
        "--concurrency", default="1,4,8", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument(
        "--prompt-tokens",
        type=int,
        default=512,
        help="about this many prompt tokens for the time-to-first-token figure (0: skip)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="rounds; figures are medians")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument(
        "--pin", action="store_true", help="pin node i to CPU i (mod the CPU count) with taskset"
    )
    args = parser.parse_args()
    results = run(args)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
