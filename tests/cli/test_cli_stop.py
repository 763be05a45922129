"""Stopping `exoquic up` as systemd and a terminal do: SIGTERM or SIGINT to the
node's whole process group. The node exits within 5 s and leaves no process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.cli.test_cli_startup import free_port

EXOQUIC = str(Path(sys.executable).with_name("exoquic"))
EXIT_LIMIT_S = 5.0

pytestmark = pytest.mark.slow


class UpProcess:
    """`exoquic up` (tinygrad, one engine thread) in a process group of its own."""

    def __init__(self, home: Path) -> None:
        self.api_port = free_port()
        env = {**os.environ, "EXOQUIC_HOME": str(home), "EXOQUIC_ENGINE_THREADS": "1"}
        env.pop("EXOQUIC_API_KEY", None)
        self.log = home.with_suffix(".log")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [EXOQUIC, "up", "--engine", "tinygrad", "--discovery", "manual",
                 "--api-port", str(self.api_port), "--node-port", "0"],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.group = self.process.pid

    def family(self) -> list[psutil.Process]:
        """Every live process of the node's group (the node included)."""
        found = []
        for process in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(process.pid) == self.group and process.status() != "zombie":
                    found.append(process)
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
        return found

    def compilers(self) -> list[psutil.Process]:
        """tinygrad's compiler processes (multiprocessing's resource tracker, which
        exits with the node, is not one)."""
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [c for c in children if "multiprocessing.spawn" in " ".join(_cmdline(c))]

    def serving(self) -> bool:
        try:
            topology = httpx.get(f"http://127.0.0.1:{self.api_port}/v1/topology", timeout=2)
        except httpx.HTTPError:
            return False
        return topology.status_code == 200 and topology.json()["status"] == "serving"

    def wait(self, ready: callable, timeout: float = 300) -> None:  # type: ignore[valid-type]
        deadline = time.monotonic() + timeout
        while not ready():
            assert self.process.poll() is None, self.log.read_text(errors="replace")
            assert time.monotonic() < deadline, self.log.read_text(errors="replace")
            time.sleep(0.2)

    def signal_group(self, signum: int) -> float:
        """Send `signum` to the whole group; seconds until the node exited."""
        started = time.monotonic()
        os.killpg(self.group, signum)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 30 s after {signal.Signals(signum).name}")
        return time.monotonic() - started

    def kill_everything(self) -> None:
        for process in self.family():
            process.kill()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[UpProcess]:
    up = UpProcess(tmp_path / "home")
    try:
        yield up
    finally:
        up.kill_everything()
        if up.process.poll() is None:
            up.process.kill()
            up.process.wait()


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def assert_clean_exit(node: UpProcess, seconds: float) -> None:
    log = node.log.read_text(errors="replace")
    assert seconds <= EXIT_LIMIT_S, f"took {seconds:.1f}s to exit\n{log}"
    time.sleep(1.0)  # anything respawned after the node's exit shows up by now
    assert node.family() == [], f"left behind: {node.family()}\n{log}"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_serving_node_has_no_children_and_stops_on_a_group_signal(
    node: UpProcess, signum: int
) -> None:
    node.wait(node.serving)
    time.sleep(2.0)
    assert node.compilers() == [], "a serving node keeps no compiler processes"
    assert_clean_exit(node, node.signal_group(signum))
    assert "Traceback" not in node.log.read_text(errors="replace")


def test_ctrl_c_while_compiling_stops_the_pool_too(node: UpProcess) -> None:
    # tinygrad compiles the shard's kernels in a process pool while loading.
    node.wait(lambda: bool(node.compilers()) or node.serving())
    if not node.compilers():
        pytest.skip("every kernel was cached: no compiler process to stop")
    # (Compiler processes still starting up may print their KeyboardInterrupt.)
    assert_clean_exit(node, node.signal_group(signal.SIGINT))
