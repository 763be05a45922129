"""A throwaway LAN of network namespaces, and discovery nodes on it (needs root).

A bridge in the root namespace and one namespace per host, each joined to the
bridge by a veth pair, with an address from 198.18.0.0/15 (set aside for lab
tests, RFC 2544), `lo` up and a multicast route (without it, joining a group
fails with "No such device"). Names carry the pid and a counter so concurrent
runs never collide; `remove()` deletes everything `create()` made.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from exoquic.identity.keys import Identity, load_or_create_identity
from exoquic.identity.trust import TrustStore

_counter = itertools.count()
Line = dict[str, Any]
SUBNET_PREFIX = "198.18.0"


@dataclass
class Host:
    namespace: str
    interface: str  # inside the namespace
    bridge_port: str  # its veth peer on the bridge (root namespace)
    address: str


@dataclass
class NetnsLan:
    bridge: str
    hosts: list[Host] = field(default_factory=list)

    def run(self, *args: str) -> None:
        """Run an `ip` command; raise with its stderr if it fails."""
        result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
        if result.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")

    def create(self, count: int) -> None:
        self.run("link", "add", self.bridge, "type", "bridge")
        # Flood multicast to every port (no snooping needed without a querier), and
        # keep the host's iptables (br_netfilter) out of this private bridge.
        self.run("link", "set", self.bridge, "type", "bridge", "mcast_snooping", "0")
        with contextlib.suppress(RuntimeError):  # older kernels lack the per-bridge switch
            self.run("link", "set", self.bridge, "type", "bridge", "nf_call_iptables", "0")
        self.run("link", "set", self.bridge, "up")
        for index in range(count):
            self._add_host(index)

    def _add_host(self, index: int) -> None:
        tag = self.bridge.removeprefix("xdb")
        host = Host(
            namespace=f"exoquic-discovery-{tag}-{index}",
            interface=f"xd{tag}n{index}",  # interface names have at most 15 characters
            bridge_port=f"xd{tag}h{index}",
            address=f"{SUBNET_PREFIX}.{index + 1}",
        )
        self.hosts.append(host)  # before creating, so remove() cleans up partial hosts
        ns = host.namespace
        self.run("netns", "add", ns)
        self.run("link", "add", host.bridge_port, "type", "veth", "peer", "name", host.interface)
        self.run("link", "set", host.interface, "netns", ns)
        self.run("link", "set", host.bridge_port, "master", self.bridge, "up")
        self.run("-n", ns, "link", "set", "lo", "up")
        self.run("-n", ns, "addr", "add", f"{host.address}/24", "dev", host.interface)
        self.run("-n", ns, "link", "set", host.interface, "up")
        self.run("-n", ns, "route", "add", "224.0.0.0/4", "dev", host.interface)

    def remove(self) -> list[str]:
        """Delete every namespace, veth and the bridge; returns what failed."""
        problems = []
        for host in self.hosts:
            for args in (("netns", "del", host.namespace), ("link", "del", host.bridge_port)):
                problems += self._quiet(*args)
        problems += self._quiet("link", "del", self.bridge)
        return problems

    def _quiet(self, *args: str) -> list[str]:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
        # A veth goes away with its namespace's end, sometimes just as we delete it.
        gone = ("Cannot find device", "No such device", "No such file")
        missing = any(text in result.stderr for text in gone)
        return [] if result.returncode == 0 or missing else [result.stderr.strip()]

    def exec_prefix(self, host: Host) -> list[str]:
        return ["ip", "netns", "exec", host.namespace]


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "network namespace tests need root (CI runs them as root)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def new_lan() -> NetnsLan:
    # Fixed-width hex (pids fit 6 digits), so names of two runs never coincide.
    return NetnsLan(bridge=f"xdb{os.getpid():06x}{next(_counter) % 256:02x}")


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
        for seen in self.lines:
            if predicate(seen[1]):
                return seen
        for item in self._arrivals(timeout):
            if predicate(item[1]):
                return item
        raise AssertionError(
            f"no matching line within {timeout} s; got {[line for _, line in self.lines]}; "
            f"stderr: {''.join(self._stderr)[-2000:]}"
        )

    def stderr_text(self) -> str:
        """What the process wrote to stderr so far."""
        return "".join(self._stderr)

    def drain(self, seconds: float) -> list[Line]:
        """Lines that arrive within `seconds`."""
        return [line for _, line in self._arrivals(seconds)]

    def _arrivals(self, seconds: float) -> Iterator[tuple[float, Line]]:
        """New lines (with their times) as they arrive, each also kept in `lines`,
        for up to `seconds` or until the output ends."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                return
            if item is None:
                return
            self.lines.append(item)
            yield item

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
