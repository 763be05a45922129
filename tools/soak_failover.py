"""Soak test of failover: greedy requests back to back while a node keeps dying.

    uv run python tools/soak_failover.py [--engine tinygrad] [--duration 420]
                                         [--period 60] [--down 5] [--max-tokens 96]
                                         [--peer-timeout 3] [--json FILE]

Three `exoquic up` processes on loopback (tests/orchestration/ring_nodes.py,
each with its own EXOQUIC_HOME in a temporary directory) form a ring. The
reference answer of each prompt is taken from the whole ring first. Then
greedy requests go back to back to the first node (the origin) for
`--duration` seconds, while every `--period` seconds one of the other nodes
(in turn) is killed with SIGKILL and restarted `--down` seconds later: every
request in flight then replays on the survivors, and again when the node is
back. Each answer counts as

- identical: exactly the reference text;
- different: another text and no error (a silent divergence: must stay 0);
- failed: an HTTP error or no answer within `--request-timeout` (a hang).

It prints one line per request that was not identical, and a summary with the
origin's replay counters (`replays`, and `replay_mismatches`: replays that
sampled another token than the first try) from `/v1/topology`. It exits with
status 1 if any answer differed or failed. Everything stays on 127.0.0.1, and
every process it starts is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "orchestration"))
from ring_nodes import RingNode, make_nodes, running, wait_serving

MODEL = "smollm2-135m-instruct"
# Prompts whose greedy answers run long, so that a kill usually lands mid-answer.
PROMPTS = [
    "Count from one to one hundred: one, two, three,",
    "Here is a long story about a dragon. Once upon a time,",
    "Explain how a bicycle works, step by step.",
    "Write a short poem about the sea, then explain it.",
    "List the planets of the solar system and describe each one.",
    "What is the capital of France? Tell me about its history.",
]


def complete(node: RingNode, prompt: str, max_tokens: int, timeout: float) -> str:
    """The greedy answer of one chat request (raises on HTTP errors and timeouts)."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens, "temperature": 0}  # fmt: skip
    response = httpx.post(f"{node.url}/v1/chat/completions", json=body, timeout=timeout)
    response.raise_for_status()
    return str(response.json()["choices"][0]["message"]["content"])


def describe(exc: httpx.HTTPError) -> str:
    """The error, with the server's own message when it sent one."""
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}: {exc.response.text[:300]}"
    return repr(exc)


class Chaos:
    """Kills a node (in turn among `victims`) every `period` s and restarts it `down` s later."""

    def __init__(self, victims: list[RingNode], period: float, down: float) -> None:
        self.victims = victims
        self.period = period
        self.down = down
        self.stop = threading.Event()
        self.events: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self.stop.set()
        self._thread.join()

    def _run(self) -> None:
        started = time.monotonic()
        for turn in range(1_000_000):
            if self.stop.wait(self.period):
                return
            victim = self.victims[turn % len(self.victims)]
            victim.kill()
            self._note(started, f"kill -9 {victim.name}")
            self.stop.wait(self.down)  # restart even when stopping: leave the ring whole
            victim.start()
            self._note(started, f"restart {victim.name}")

    def _note(self, started: float, event: str) -> None:
        line = f"{time.monotonic() - started:7.1f}s {event}"
        self.events.append(line)
        print(line, flush=True)


def soak(nodes: list[RingNode], args: argparse.Namespace) -> dict[str, Any]:
    origin, victims = nodes[0], nodes[1:]
    wait_serving(nodes, len(nodes))
    references = {p: complete(origin, p, args.max_tokens, args.request_timeout) for p in PROMPTS}
    counts: Counter[str] = Counter()
    seconds: list[float] = []  # of every answer
    chaos = Chaos(victims, args.period, args.down)
    chaos.start()
    deadline = time.monotonic() + args.duration
    try:
        for i in range(1_000_000):
            if time.monotonic() >= deadline:
                break
            prompt = PROMPTS[i % len(PROMPTS)]
            started = time.monotonic()
            try:
                text = complete(origin, prompt, args.max_tokens, args.request_timeout)
            except httpx.HTTPError as exc:
                counts["failed"] += 1
                took = time.monotonic() - started
                print(f"request {i}: failed after {took:.1f}s: {describe(exc)}", flush=True)
                continue
            took = time.monotonic() - started
            seconds.append(took)
            if text == references[prompt]:
                counts["identical"] += 1
                print(f"request {i}: identical in {took:.1f}s", flush=True)
                continue
            counts["different"] += 1
            print(f"request {i}: DIFFERENT for {prompt!r} in {took:.1f}s\n"
                  f"  want {references[prompt]!r}\n  got  {text!r}", flush=True)  # fmt: skip
    finally:
        chaos.join()
    ring = origin.topology()["stats"]["ring"]
    return {
        "engine": args.engine,
        "duration_s": args.duration,
        "period_s": args.period,
        "identical": counts["identical"],
        "different": counts["different"],
        "failed": counts["failed"],
        "median_answer_s": round(statistics.median(seconds), 2) if seconds else None,
        "slowest_answer_s": round(max(seconds), 2) if seconds else None,
        "replays": ring["replays"],
        "replay_mismatches": ring.get("replay_mismatches"),
        "chaos": chaos.events,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="tinygrad")
    parser.add_argument("--duration", type=float, default=420.0, help="seconds of requests")
    parser.add_argument("--period", type=float, default=60.0, help="seconds between kills")
    parser.add_argument("--down", type=float, default=5.0, help="seconds a killed node stays down")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--peer-timeout", type=float, default=3.0, help="the nodes' --peer-timeout")
    parser.add_argument("--request-timeout", type=float, default=180.0)
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args()
    extra = ["--peer-timeout", str(args.peer_timeout)]
    with tempfile.TemporaryDirectory(prefix="exoquic-soak-") as root:
        nodes = make_nodes(Path(root), ["a", "b", "c"], [args.engine] * 3, extra)
        with running(nodes):
            result = soak(nodes, args)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    sys.exit(1 if result["different"] or result["failed"] else 0)


if __name__ == "__main__":
    main()
