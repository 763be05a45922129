"""`exoquic status` and `exoquic ps` asking a node (`exoquic.local_api.get_json`):
the real command against a small real HTTP server on loopback, for how each
finds the node, sends the key and says what went wrong in one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from exoquic.api.security import API_KEY_ENV

EXOQUIC = Path(sys.executable).with_name("exoquic")
RUNNING = {"models": [{"name": "smollm2:135m", "model": "smollm2:135m", "default": True}]}


@dataclass
class FakeNode:
    """What the server answers (status, JSON body) and the Authorization headers it got."""

    url: str
    status: int = 200
    body: object = field(default_factory=lambda: RUNNING)
    keys_seen: list[str | None] = field(default_factory=list)


@pytest.fixture
def node() -> Iterator[FakeNode]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    fake = FakeNode(f"http://127.0.0.1:{server.server_address[1]}")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            fake.keys_seen.append(self.headers.get("Authorization"))
            data = json.dumps(fake.body).encode()
            self.send_response(fake.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server.RequestHandlerClass = Handler
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


def exoquic(home: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    env.update({"EXOQUIC_HOME": str(home), "COLUMNS": "200"})
    if key is not None:
        env[API_KEY_ENV] = key
    return subprocess.run(
        [str(EXOQUIC), *args], env=env, capture_output=True, text=True, timeout=60
    )


def port_of(node: FakeNode) -> str:
    return node.url.rsplit(":", 1)[1]


def test_ps_finds_the_node_of_its_home_and_prints_its_answer(
    node: FakeNode, tmp_path: Path
) -> None:
    # As `exoquic up` leaves it; this test's own process stands for the node's.
    api = {"url": node.url, "pid": os.getpid(), "key_required": False}
    (tmp_path / "api.json").write_text(json.dumps(api))
    result = exoquic(tmp_path, "ps", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == RUNNING
    assert node.keys_seen == [None]  # no key anywhere: none is sent
    table = exoquic(tmp_path, "ps", key="exq-k")
    assert table.returncode == 0 and "smollm2:135m (default)" in table.stdout
    assert node.keys_seen[-1] == "Bearer exq-k"


@pytest.mark.parametrize("command", ["ps", "status"])
def test_a_refused_key_says_where_it_came_from(
    node: FakeNode, tmp_path: Path, command: str
) -> None:
    node.status, node.body = 401, {"error": {"message": "invalid API key"}}
    without = exoquic(tmp_path, command, "--api-port", port_of(node))
    assert without.returncode == 1
    assert without.stderr.startswith("exoquic: this node needs its API key: set EXOQUIC_API_KEY")
    wrong = exoquic(tmp_path, command, "--api-port", port_of(node), key="exq-wrong")
    assert wrong.returncode == 1
    assert f"the node at {node.url} refused the API key from EXOQUIC_API_KEY" in wrong.stderr
    assert len(wrong.stderr.splitlines()) == 1


def test_another_error_is_passed_on_and_no_node_is_named_as_such(
    node: FakeNode, tmp_path: Path
) -> None:
    node.status, node.body = 503, {"error": {"message": "no plan yet"}}
    refused = exoquic(tmp_path, "status", "--api-port", port_of(node))
    assert refused.returncode == 1
    expected = f"exoquic: the node at {node.url} answered HTTP 503: no plan yet"
    assert refused.stderr.strip() == expected
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    gone = exoquic(tmp_path, "ps", "--api-port", str(port))
    assert gone.returncode == 1
    assert gone.stderr.startswith(f"exoquic: no node answers at http://127.0.0.1:{port}")
