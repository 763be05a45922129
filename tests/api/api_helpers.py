"""Helpers for the API tests: real `exoquic up` nodes, and a tiny in-process one.

The real node is started once per session as a subprocess, exactly as a user
starts it, with a throwaway EXOQUIC_HOME and an API key (so every test also
exercises the key path; `test_security.py` covers keyless binds). Tests that
talk to it use greedy sampling and small `max_tokens` to stay fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from engines.tiny_model import TINY, random_tensors
from fixtures.hub_gguf import GGUF_FILE, GGUF_REPO, write_gguf_repo
from hypercorn.config import Config
from hypercorn.trio import serve
from quart_trio import QuartTrio

from exoquic.api.app import create_app
from exoquic.download.cache import RepoCache
from exoquic.engines.mlx.engine import MLXEngine
from exoquic.models.config import ModelConfig
from exoquic.models.registry import DEFAULT_MODEL_ID, get_model
from exoquic.models.shard import Shard
from exoquic.models.tokenizer import Tokenizer
from exoquic.models.weights import ShardWeights
from exoquic.orchestration.catalog import Catalog
from exoquic.orchestration.modelset import ModelSet
from exoquic.orchestration.node import Node
from exoquic.orchestration.worker import EngineWorker

REPO = Path(__file__).resolve().parents[2]
TEST_KEY = "exq-test-key-for-the-api-suite"
# A registry model the session's local hub serves, for pulls from the UI: its GGUF
# is random bytes (a pull fetches and verifies a file; loading it is not asked).
PULLABLE = get_model("smollm2:360m")
PULLABLE_BYTES = 8 * 1024 * 1024
STARTUP_TIMEOUT_S = 500.0  # a cold start may compile kernels on two busy cores


@dataclass
class RunningNode:
    """A node process serving the API at `url`."""

    url: str
    api_key: str | None
    process: subprocess.Popen[bytes]
    log_path: Path
    home: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def health(self) -> dict[str, object]:
        response = httpx.get(f"{self.url}/health", headers=self.headers(), timeout=10)
        response.raise_for_status()
        return response.json()  # type: ignore[no-any-return]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_idle(self, timeout: float = 60.0) -> dict[str, object]:
        """Wait until no request and no KV cache is live; return the last /health."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if health["active_requests"] == 0 and health["kv_caches"] == 0:
                return health
            if time.monotonic() > deadline:
                raise AssertionError(f"node still busy after {timeout}s: {health}")
            time.sleep(0.1)


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def engine_under_test() -> str:
    return os.environ.get("EXOQUIC_TEST_ENGINE", "auto")


def start_node(
    home: Path, *args: str, api_key: str | None = None, env: dict[str, str] | None = None
) -> RunningNode:
    """Start `exoquic up` and wait until /health answers (or the process dies);
    `env` adds to the environment it runs in."""
    port = free_port()
    env = {**os.environ, **(env or {}), "EXOQUIC_HOME": str(home)}
    env.pop("EXOQUIC_API_KEY", None)
    if api_key:
        env["EXOQUIC_API_KEY"] = api_key
    log_path = home / "node.log"
    # The console script `uv run exoquic` runs, from this environment.
    # Its node protocol stays on loopback with no peers, so parallel test runs
    # (and nodes of the people around) neither collide nor discover each other.
    isolated = ["--node-host", "127.0.0.1", "--node-port", str(free_port(socket.SOCK_DGRAM))]
    isolated += ["--discovery", "manual"]
    command = [str(Path(sys.executable).with_name("exoquic")), "up", "--api-port", str(port)]
    command += [*isolated, *args]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    node = RunningNode(f"http://127.0.0.1:{port}", api_key, process, log_path, home)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exoquic up exited with {process.returncode}:\n{node.log()}")
        try:
            node.health()
            return node
        except httpx.HTTPError:
            time.sleep(0.5)
    stop_node(node)
    raise RuntimeError(f"exoquic up did not answer /health in {STARTUP_TIMEOUT_S}s:\n{node.log()}")


def check_generates(node: RunningNode) -> None:
    """One token end to end, so a broken engine fails here with the node's log
    instead of as many confusing test failures."""
    response = httpx.post(
        f"{node.url}/v1/completions",
        json={"model": DEFAULT_MODEL_ID, "prompt": "Hi", "max_tokens": 1, "temperature": 0},
        headers=node.headers(),
        timeout=STARTUP_TIMEOUT_S,
    )
    if response.status_code != 200:
        raise RuntimeError(
            f"the node cannot generate: {response.status_code} {response.text}\n{node.log()}"
        )


def stop_node(node: RunningNode) -> None:
    node.process.terminate()
    try:
        node.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        node.process.kill()
        node.process.wait()


# --- Response checks shared by the in-process tests.


def error_of(body: bytes) -> dict[str, Any]:
    """The `error` object, checking it has exactly OpenAI's four fields."""
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    return error  # type: ignore[no-any-return]


def sse_payloads(body: bytes) -> list[Any]:
    """The `data:` payloads of an SSE body, checking the framing; `[DONE]` last."""
    text = body.decode()
    assert text.endswith("\n\n")
    events = text[:-2].split("\n\n")
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    return [json.loads(e[6:]) for e in events[:-1]]


# --- In-process: the real app, tokenizer, worker and MLX engine, on random tiny weights.

TINY_CONFIG = dataclasses.replace(
    TINY,
    vocab_size=49152,  # the real tokenizer's vocabulary
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=2,
    num_kv_heads=1,
)


def tiny_weights(config: ModelConfig, seed: int = 0) -> ShardWeights:
    """Random float32 weights for every tensor of a whole (tiny) model."""
    shard = Shard.whole(DEFAULT_MODEL_ID, config.num_layers)
    return ShardWeights(config, shard, random_tensors(config, seed=seed, plain=True))


@asynccontextmanager
async def open_tiny_node(engine: MLXEngine, tokenizer: Tokenizer) -> AsyncIterator[Node]:
    """A node around `engine` with its worker running (inside a trio run)."""
    worker = EngineWorker(engine)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        yield Node(DEFAULT_MODEL_ID, TINY_CONFIG, tokenizer, worker, TINY_CONFIG.max_context)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def serving(app: QuartTrio) -> AsyncIterator[httpx.AsyncClient]:
    """`app` served by Hypercorn on a free loopback port; a client for it."""
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    async with trio.open_nursery() as nursery:
        run_server = partial(serve, app, config, shutdown_trigger=trio.sleep_forever)
        [url] = await nursery.start(run_server)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            yield client
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def serving_on_demand(
    node: Node, cache_dir: Path
) -> AsyncIterator[tuple[httpx.AsyncClient, ModelSet]]:
    """The app around `node`, loading the models cached in `cache_dir` on demand."""
    models = ModelSet(node, Catalog(cache_dir), usable_memory=8 << 30)
    async with trio.open_nursery() as nursery:
        await nursery.start(models.run)
        async with serving(create_app(node, models=models)) as client:
            yield client, models
        nursery.cancel_scope.cancel()


# The small llama GGUF of `fixtures.hub_gguf`, cached as `exoquic pull` leaves it.
CACHED_GGUF_ID = f"{GGUF_REPO}/{GGUF_FILE}"


def cache_small_gguf(cache_dir: Path, work: Path) -> None:
    """Write `CACHED_GGUF_ID` into the hub cache `cache_dir` (`work`: scratch space)."""
    cache_file(cache_dir, GGUF_REPO, GGUF_FILE, write_gguf_repo(work) / GGUF_FILE)


def cache_file(cache_dir: Path, repo_id: str, filename: str, written: Path) -> None:
    """Move `written` into the hub cache as `exoquic pull` leaves a file of `repo_id`."""
    repo = RepoCache(cache_dir, repo_id)
    blob = repo.blob(hashlib.sha256(f"{repo_id}/{filename}".encode()).hexdigest())
    blob.parent.mkdir(parents=True)
    written.rename(blob)
    commit = "5" * 40
    repo.write_ref("main", commit)
    repo.link(commit, filename, blob)
