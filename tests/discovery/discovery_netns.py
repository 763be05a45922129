"""A throwaway LAN of network namespaces for discovery tests (needs root).

A bridge in the root namespace and one namespace per host, each joined to the
bridge by a veth pair, with an address from 198.18.0.0/15 (set aside for lab
tests, RFC 2544), `lo` up and a multicast route (without it, joining a group
fails with "No such device"). Names carry the pid and a counter so concurrent
runs never collide; `remove()` deletes everything `create()` made.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from dataclasses import dataclass, field

_counter = itertools.count()
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
        tag = self.bridge.removeprefix("xqb")
        host = Host(
            namespace=f"exoquic-{tag}-{index}",
            interface=f"xq{tag}n{index}",
            bridge_port=f"xq{tag}h{index}",
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
        missing = "Cannot find device" in result.stderr or "No such file" in result.stderr
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
    return NetnsLan(bridge=f"xqb{os.getpid()}{next(_counter)}")
