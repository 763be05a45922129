"""Fixtures for discovery tests: a network namespace LAN with nodes on it."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from discovery_netns import Host, NetnsLan, new_lan, unavailable_reason

from exoquic.identity.keys import Identity, load_or_create_identity
from exoquic.identity.trust import TrustStore

Line = dict[str, Any]


@pytest.fixture
def netns_lan() -> Iterator[NetnsLan]:
    """Three hosts (namespaces) on one bridge; everything is removed afterwards."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    lan = new_lan()
    try:
        try:
            lan.create(3)
        except RuntimeError as exc:
            pytest.skip(f"cannot build network namespaces here: {exc}")
        yield lan
    finally:
        problems = lan.remove()
        assert not problems, f"netns cleanup failed: {problems}"


class NodeProcess:
    """`python -m exoquic.discovery` in a namespace; its JSON lines, read as they come."""

    def __init__(self, command: list[str]) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.lines: list[tuple[float, Line]] = []  # (seconds since start, line)
        self._queue: queue.Queue[tuple[float, Line] | None] = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for text in self.process.stdout:
            self._queue.put((time.monotonic() - self.started, json.loads(text)))
        self._queue.put(None)

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        self._stderr.extend(self.process.stderr)

    def wait_for(self, predicate: Callable[[Line], bool], timeout: float) -> tuple[float, Line]:
        """The first line (new or already read) matching `predicate`, with its time."""
        for item in self.lines:
            if predicate(item[1]):
                return item
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if item is None:
                break
            self.lines.append(item)
            if predicate(item[1]):
                return item
        raise AssertionError(
            f"no matching line within {timeout} s; got {[line for _, line in self.lines]}; "
            f"stderr: {''.join(self._stderr)[-2000:]}"
        )

    def drain(self, seconds: float) -> list[Line]:
        """Lines that arrive within `seconds`."""
        new: list[Line] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if item is None:
                break
            self.lines.append(item)
            new.append(item[1])
        return new

    def stop(self) -> Line | None:
        """SIGTERM; the statistics line it prints on the way out, if any."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.wait_for(lambda line: "statistics" in line, timeout=10)[1]
            finally:
                self.kill()
        return None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


class NodeLauncher:
    """Creates homes (identity + trust store) and starts discovery nodes in namespaces."""

    def __init__(self, lan: NetnsLan, root: Path) -> None:
        self.lan = lan
        self.root = root
        self.nodes: list[NodeProcess] = []

    def home(self, name: str) -> tuple[Path, Identity]:
        home = self.root / name
        home.mkdir(exist_ok=True)
        return home, load_or_create_identity(home)

    def trust_each_other(self, homes: list[tuple[Path, Identity]]) -> None:
        for home, _ in homes:
            store = TrustStore.open(home)
            for other_home, other in homes:
                if other_home != home:
                    store.add(other.public_key, other_home.name)

    def start(self, host: Host, home: Path, *extra: str) -> NodeProcess:
        command = [
            *self.lan.exec_prefix(host),
            sys.executable,
            "-m",
            "exoquic.discovery",
            "--home",
            str(home),
            "--methods",
            "multicast",
            "--name",
            home.name,
            *extra,
        ]
        node = NodeProcess(command)
        self.nodes.append(node)
        return node

    def start_all(self, homes: list[tuple[Path, Identity]], *extra: str) -> list[NodeProcess]:
        """One node per home, on the LAN's hosts in order."""
        hosts = self.lan.hosts[: len(homes)]
        return [
            self.start(host, home, *extra) for host, (home, _) in zip(hosts, homes, strict=True)
        ]

    def stop_all(self) -> None:
        for node in self.nodes:
            node.kill()


@pytest.fixture
def launcher(netns_lan: NetnsLan, tmp_path: Path) -> Iterator[NodeLauncher]:
    launcher = NodeLauncher(netns_lan, tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop_all()  # before the namespaces go away
