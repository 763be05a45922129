"""Ready-to-serve: how long `exoquic up --model FILE` takes until it answers.

    uv run python tools/bench_ready.py FILE.gguf [--engine tinygrad] [--runs 3]

Each run starts a fresh `exoquic up` (its own EXOQUIC_HOME in a temporary
directory, loopback ports, no discovery) and reports, from the process start:

- serving: `/v1/topology` says the node serves its plan (shard loaded, warmed up);
- answered: a 1-token greedy completion has come back (what a user waits for);
- serving CPU: the CPU seconds (user + system, all threads) the node had used when
  it was serving: on a machine shared with other work, wall times swing with the
  load while this figure stays close to what an idle machine would take.

The first run may compile kernels (tinygrad caches them across processes);
the later runs are the usual restart. The node's debug log (with timestamps)
is kept under --logs when given, to see where the seconds go. To measure
another checkout's code, run this file with PYTHONPATH=that/checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

STARTUP_TIMEOUT_S = 600


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_node(
    model: str, engine: str, home: Path, api_port: int, log: Path
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "EXOQUIC_HOME": str(home)}
    env.pop("EXOQUIC_API_KEY", None)
    (home / "peers.json").write_text(json.dumps({"peers": []}))
    command = [
        sys.executable, "-c", "from exoquic.cli import main; main()",
        "-v", "up",
        "--model", model,
        "--engine", engine,
        "--api-port", str(api_port),
        "--node-host", "127.0.0.1",
        "--node-port", str(free_port(socket.SOCK_DGRAM)),
        "--discovery", "manual",
        "--peers", str(home / "peers.json"),
    ]  # fmt: skip
    with log.open("wb") as out:
        return subprocess.Popen(command, cwd=home, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_serving(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exoquic up exited:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            if httpx.get(f"{url}/v1/topology", timeout=5).json().get("status") == "serving":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"not serving after {STARTUP_TIMEOUT_S} s")


def one_run(model: str, engine: str, logs: Path | None, index: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-ready-") as root:
        home, api_port = Path(root), free_port()
        log = home / "node.log"
        url = f"http://127.0.0.1:{api_port}"
        started = time.perf_counter()
        process = start_node(model, engine, home, api_port, log)
        try:
            wait_serving(process, url, log)
            serving = time.perf_counter() - started
            cpu = psutil.Process(process.pid).cpu_times()
            serving_cpu = cpu.user + cpu.system
            model_id = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
            response = httpx.post(
                f"{url}/v1/completions",
                json={"model": model_id, "prompt": "Hello", "max_tokens": 1, "temperature": 0},
                timeout=STARTUP_TIMEOUT_S,
            )
            response.raise_for_status()
            answered = time.perf_counter() - started
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if logs is not None:
                logs.mkdir(parents=True, exist_ok=True)
                shutil.copy(log, logs / f"run{index}.log")
    return {
        "run": index,
        "serving_s": round(serving, 2),
        "serving_cpu_s": round(serving_cpu, 2),
        "answered_s": round(answered, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a GGUF file (or any --model value)")
    parser.add_argument("--engine", default="tinygrad")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--logs", type=Path, help="keep each run's debug log here")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    results = []
    for index in range(args.runs):
        result = one_run(args.model, args.engine, args.logs, index)
        print(f"run {index}: serving {result['serving_s']:.2f} s "
              f"({result['serving_cpu_s']:.2f} s CPU), "
              f"first answer {result['answered_s']:.2f} s", flush=True)  # fmt: skip
        results.append(result)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
