"""Time to first token of a chat's second turn against its first: the prefix cache.

    uv run python tools/bench_prefix.py [--engine mlx] [--nodes 1,2]
                                        [--history-tokens 1500] [--repeats 3]

For each ring size (`exoquic up` processes on loopback, started with
tests/orchestration/ring_nodes.py), each repeat streams a chat whose first
user message is a history of about `--history-tokens` tokens (a new one each
repeat, so no repeat reuses another's caches), then its second turn: the
history, the answer and a short question. It reports both turns' time to the
first token, their ratio (the target is <= 0.2), and the positions the
engines ran for the second turn (`/v1/topology` stats), with their medians.
On a loaded machine only ratios within one run mean much.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "orchestration"))
from ring_nodes import RingNode, make_nodes, running, wait_serving

MODEL = "smollm2-135m-instruct"
PIECE = "Note {i}.{r}: the stone in row {i} of the old wall is grey. "  # ~21 tokens


def history(tokens: int, repeat: int) -> str:
    return "".join(PIECE.format(i=i, r=repeat) for i in range(tokens // 21))


def stream_chat(node: RingNode, messages: list[dict[str, str]]) -> dict[str, Any]:
    """One streamed greedy chat turn: its text, time to first token and usage."""
    body = {"model": MODEL, "messages": messages, "max_tokens": 16, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    started = time.perf_counter()
    first: float | None = None
    text, usage = "", {}
    with httpx.stream("POST", f"{node.url}/v1/chat/completions", json=body, timeout=3600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if "error" in data:
                raise RuntimeError(data["error"]["message"])
            usage = data.get("usage") or usage
            for choice in data.get("choices", []):
                piece = choice.get("delta", {}).get("content")
                if piece:
                    first = first or time.perf_counter()
                    text += piece
    assert first is not None, "no token came back"
    return {"text": text, "ttft_s": first - started, "usage": usage}


def positions_run(nodes: list[RingNode]) -> list[int]:
    return [int(node.topology()["stats"]["worker"]["positions_run"]) for node in nodes]


def one_conversation(nodes: list[RingNode], tokens: int, repeat: int) -> dict[str, Any]:
    turn = [{"role": "user", "content": f"Remember these notes. {history(tokens, repeat)}"}]
    first = stream_chat(nodes[0], turn)
    turn += [{"role": "assistant", "content": first["text"]},
             {"role": "user", "content": "Which row is the last?"}]  # fmt: skip
    before = positions_run(nodes)
    second = stream_chat(nodes[0], turn)
    ran = [a - b for a, b in zip(positions_run(nodes), before, strict=True)]
    return {
        "history_tokens": first["usage"].get("prompt_tokens"),
        "second_prompt_tokens": second["usage"].get("prompt_tokens"),
        "first_ttft_s": round(first["ttft_s"], 3),
        "second_ttft_s": round(second["ttft_s"], 3),
        "ratio": round(second["ttft_s"] / first["ttft_s"], 3),
        "second_turn_positions_run": ran,
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-prefix-") as root:
        for n in args.nodes:
            nodes = make_nodes(
                Path(root) / f"ring{n}", [f"n{i}" for i in range(n)], [args.engine] * n
            )
            with running(nodes):
                wait_serving(nodes, n, timeout=1800)
                stream_chat(nodes[0], [{"role": "user", "content": "Hello"}])  # warm up
                rounds = [
                    one_conversation(nodes, args.history_tokens, r) for r in range(args.repeats)
                ]
            result = {"nodes": n, "engine": args.engine, "rounds": rounds,
                      "median_ratio": statistics.median(r["ratio"] for r in rounds)}  # fmt: skip
            print(json.dumps(result), flush=True)
            results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--engine", default="mlx")
    parser.add_argument("--nodes", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--history-tokens", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    results = run(parser.parse_args())
    for r in results:
        print(f"{r['nodes']} node(s): second turn's time to first token = "
              f"{r['median_ratio']:.1%} of the first's (median of {len(r['rounds'])})")  # fmt: skip


if __name__ == "__main__":
    main()
