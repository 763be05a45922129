"""`exoquic up` startup mistakes, through the real command: one clear line on
stderr, exit status 1, no traceback, and no claim to serve before the port is bound."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

EXOQUIC = str(Path(sys.executable).with_name("exoquic"))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def up(
    home: Path, *options: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "EXOQUIC_HOME": str(home), **(env or {})}
    environment.pop("EXOQUIC_API_KEY", None)
    command = [EXOQUIC, "up", "--engine", "mlx", "--discovery", "manual", *options]
    if "--api-port" not in options:
        command += ["--api-port", str(free_port())]
    if "--node-port" not in options:
        command += ["--node-port", str(free_port(socket.SOCK_DGRAM))]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    assert "serving" not in output, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("exoquic: ")]
    assert len(errors) == 1, output
    for fragment in fragments:
        assert fragment in errors[0], output


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_api_port_in_use(tmp_path: Path, listening_port: int) -> None:
    result = up(tmp_path, "--api-port", str(listening_port))
    assert_one_line_error(result, f"127.0.0.1:{listening_port}", "--api-port")


def test_node_port_in_use(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("0.0.0.0", 0))
        port = taken.getsockname()[1]
        result = up(tmp_path, "--node-port", str(port))
    assert_one_line_error(result, f"UDP 0.0.0.0:{port}", "--node-port")


def test_unknown_model(tmp_path: Path) -> None:
    result = up(tmp_path, "--model", "nonexistent-model")
    assert_one_line_error(result, "unknown model 'nonexistent-model'")


def test_not_a_model_file(tmp_path: Path) -> None:
    bogus = tmp_path / "passwd"
    bogus.write_text("root:x:0:0:root:/root:/bin/bash\n")
    result = up(tmp_path / "home", "--model", str(bogus))
    assert_one_line_error(result, "not a GGUF file")


def test_broken_peers_file_names_the_line(tmp_path: Path) -> None:
    peers = tmp_path / "peers.json"
    peers.write_text('{"peers": [\n  {"id": "exq-1234",\n')
    result = up(tmp_path / "home", "--peers", str(peers))
    assert_one_line_error(result, str(peers), "line 3")


def test_missing_peers_file(tmp_path: Path) -> None:
    result = up(tmp_path / "home", "--peers", str(tmp_path / "absent.json"))
    assert_one_line_error(result, "absent.json", "no such file")


def test_home_that_is_a_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("not a directory")
    result = up(home)
    assert_one_line_error(result, "EXOQUIC_HOME", str(home))


def test_verbose_keeps_the_traceback(tmp_path: Path) -> None:
    environment = {**os.environ, "EXOQUIC_HOME": str(tmp_path)}
    command = [EXOQUIC, "-v", "up", "--engine", "mlx", "--model", "nonexistent-model",
               "--api-port", str(free_port())]  # fmt: skip
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "UnknownModelError" in result.stderr
