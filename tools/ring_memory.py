"""Resident memory of each node of a ring on this machine, serving one GGUF file.

    uv run python tools/ring_memory.py FILE.gguf [--nodes 2] [--engine tinygrad] [--tokens 8]

Starts `--nodes` `exoquic up --model FILE` processes on loopback (the ring
tests' launcher, tests/orchestration/ring_nodes.py), waits until they serve one
plan, generates `--tokens` tokens through the first node, and reports for each
node its layers, its peak resident memory (VmHWM, loading included) and its
resident memory now (VmRSS), in MiB and as a fraction of the file's size.
The figure issue 13 asks for: each node of a 2-node ring <= 0.65x the file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "orchestration"))
from ring_nodes import RingNode, make_nodes, running, wait_serving

MIB = 1 << 20


def memory_mib(pid: int) -> dict[str, float]:
    """Peak and current resident memory of a process, from /proc (MiB)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) / 1024  # kB -> MiB
    return {"peak_mib": round(fields["VmHWM"], 1), "now_mib": round(fields["VmRSS"], 1)}


def generate(node: RingNode, tokens: int) -> dict[str, Any]:
    model = httpx.get(f"{node.url}/v1/models", timeout=30).json()["data"][0]["id"]
    body = {"model": model, "prompt": "The history of the printing press",
            "max_tokens": tokens, "temperature": 0}  # fmt: skip
    started = time.perf_counter()
    response = httpx.post(f"{node.url}/v1/completions", json=body, timeout=600)
    response.raise_for_status()
    usage = response.json()["usage"]
    return {"completion_tokens": usage["completion_tokens"],
            "seconds": round(time.perf_counter() - started, 2)}  # fmt: skip


def measure(path: Path, count: int, engine: str, tokens: int) -> dict[str, Any]:
    file_mib = path.stat().st_size / MIB
    with tempfile.TemporaryDirectory() as root:
        names = [f"node{i}" for i in range(count)]
        nodes = make_nodes(Path(root), names, [engine] * count, ["--model", str(path)])
        with running(nodes):
            started = time.perf_counter()
            wait_serving(nodes, count, timeout=1200)
            ready_s = time.perf_counter() - started
            run = generate(nodes[0], tokens)
            layers = {n["name"]: n["layers"] for n in nodes[0].topology()["nodes"]}
            per_node = []
            for node in nodes:
                assert node.process is not None
                mem = memory_mib(node.process.pid)
                per_node.append({
                    "name": node.name, "layers": layers.get(node.name), **mem,
                    "peak_x_file": round(mem["peak_mib"] / file_mib, 3),
                    "now_x_file": round(mem["now_mib"] / file_mib, 3),
                })  # fmt: skip
    return {"file": path.name, "file_mib": round(file_mib, 1), "engine": engine,
            "ready_s": round(ready_s, 1), "generation": run, "nodes": per_node}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file", type=Path, help="a GGUF file")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--engine", default="tinygrad", choices=("tinygrad", "mlx"))
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    result = measure(args.file, args.nodes, args.engine, args.tokens)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
