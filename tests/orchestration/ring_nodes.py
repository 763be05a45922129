"""Real `exoquic up` processes on loopback that form rings, for the ring tests and bench.

Each node has its own EXOQUIC_HOME (identity key, trust store), API port and
QUIC port; the nodes trust each other's keys (written straight into their
trust stores: pairing is tested elsewhere) and find each other through a
manual peers file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from exoquic.identity.keys import load_or_create_identity
from exoquic.identity.trust import TrustStore

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 300.0


def engine_under_test() -> str:
    """MLX unless EXOQUIC_TEST_ENGINE says otherwise: on these CPUs tinygrad
    compiles kernels per shard shape for minutes, MLX starts in seconds."""
    engine = os.environ.get("EXOQUIC_TEST_ENGINE", "mlx")
    return "mlx" if engine == "auto" else engine


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RingNode:
    """One `exoquic up` process."""

    name: str
    home: Path
    node_id: str
    public_key: bytes
    api_port: int = field(default_factory=free_port)
    quic_port: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))
    engine: str = "mlx"
    extra: tuple[str, ...] = ()
    cpu: int | None = None  # pin the process to this CPU (taskset), for benchmarks
    env: dict[str, str] = field(default_factory=dict)  # more environment variables
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def log_path(self) -> Path:
        return self.home / "node.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self) -> None:
        env = {**os.environ, "EXOQUIC_HOME": str(self.home), **self.env}
        env.pop("EXOQUIC_API_KEY", None)
        command = [
            str(Path(sys.executable).with_name("exoquic")),
            "up",
            "--engine", self.engine,
            "--api-port", str(self.api_port),
            "--name", self.name,
            "--node-host", "127.0.0.1",
            "--node-port", str(self.quic_port),
            "--discovery", "manual",
            "--peers", str(self.home / "peers.json"),
            *self.extra,
        ]  # fmt: skip
        if self.cpu is not None:
            command = ["taskset", "-c", str(self.cpu), *command]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def topology(self) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/v1/topology", timeout=10)
        response.raise_for_status()
        return response.json()

    def kill(self) -> None:
        """kill -9: no goodbye, the peers must notice by themselves."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def make_nodes(
    root: Path, names: Sequence[str], engines: Sequence[str], extra: Sequence[str] = ()
) -> list[RingNode]:
    """Homes for `names`, each trusting and listing all the others."""
    nodes = []
    for name, engine in zip(names, engines, strict=True):
        home = root / name
        home.mkdir(parents=True, exist_ok=True)
        identity = load_or_create_identity(home)
        nodes.append(
            RingNode(name, home, identity.node_id, identity.public_key, engine=engine,
                     extra=tuple(extra))
        )  # fmt: skip
    for node in nodes:
        trust = TrustStore.open(node.home)
        peers = []
        for other in nodes:
            if other is not node:
                trust.add(other.public_key, other.name)
                peers.append({"id": other.node_id, "host": "127.0.0.1", "port": other.quic_port})
        (node.home / "peers.json").write_text(json.dumps({"peers": peers}))
    return nodes


def wait_serving(nodes: Sequence[RingNode], size: int, timeout: float = STARTUP_TIMEOUT_S) -> int:
    """Wait until every node serves a plan of `size` nodes; returns its version."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        for node in nodes:
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"{node.name} exited:\n{node.log()}")
        try:
            views = [node.topology() for node in nodes]
        except httpx.HTTPError as exc:
            last = exc
            time.sleep(0.3)
            continue
        last = views
        versions = {v["plan_version"] for v in views}
        if (
            all(v["status"] == "serving" for v in views)
            and len(versions) == 1
            and all(sum(1 for n in v["nodes"] if n["layers"]) == size for v in views)
        ):
            return int(versions.pop())
        time.sleep(0.3)
    logs = "\n".join(f"--- {n.name}\n{n.log()[-3000:]}" for n in nodes)
    raise AssertionError(f"no {size}-node plan within {timeout}s: {last}\n{logs}")


@contextmanager
def running(nodes: Sequence[RingNode]) -> Iterator[Sequence[RingNode]]:
    """Start the nodes; stop (or kill) every one on the way out."""
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def complete(node: RingNode, prompt: str, max_tokens: int, timeout: float = 300) -> dict[str, Any]:
    """A greedy /v1/completions call; returns the response JSON (raises on HTTP errors)."""
    response = httpx.post(
        f"{node.url}/v1/completions",
        json={"model": "smollm2-135m-instruct", "prompt": prompt, "max_tokens": max_tokens,
              "temperature": 0},
        timeout=timeout,
    )  # fmt: skip
    response.raise_for_status()
    return response.json()
