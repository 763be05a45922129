"""The documented ways for nodes to find and trust each other, through the real
`exoquic` command in real processes: Tailscale discovery, peers trusted by node
id alone (`exoquic trust add`) in a manual peers file, and trust changes that
reach a running node without a restart."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from exoquic.identity.keys import load_or_create_identity
from exoquic.identity.trust import TrustStore
from tests.orchestration.ring_nodes import (
    RingNode,
    engine_under_test,
    free_port,
    running,
    wait_serving,
)

pytestmark = pytest.mark.slow

EXOQUIC = str(Path(sys.executable).with_name("exoquic"))
TRUST_CHANGE_LIMIT_S = 2.0


def exoquic(node: RingNode, *args: str) -> str:
    """Run an `exoquic` command as the user of `node`'s device would."""
    env = {**os.environ, "EXOQUIC_HOME": str(node.home)}
    result = subprocess.run(
        [EXOQUIC, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def new_node(root: Path, name: str, **fields: object) -> RingNode:
    home = root / name
    home.mkdir(parents=True)
    identity = load_or_create_identity(home)
    node = RingNode(name, home, identity.node_id, identity.public_key, engine=engine_under_test())
    for key, value in fields.items():
        setattr(node, key, value)
    return node


def live_peers(node: RingNode) -> set[str]:
    return {n["id"] for n in node.topology()["nodes"] if n["live"] and not n["self"]}


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until `condition()` held; fails after `timeout`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"not within {timeout}s: {what}")
        time.sleep(0.1)
    return time.monotonic() - started


# --- Tailscale ----------------------------------------------------------------


def fake_tailscale(bin_dir: Path, me: str, others: Sequence[str]) -> None:
    """A `tailscale` on PATH that prints `status --json` as the real one does."""
    status = {
        "BackendState": "Running",
        "Self": {"HostName": me, "TailscaleIPs": [me, "fd7a:115c:a1e0::1"], "Online": True},
        "Peer": {
            f"nodekey:{i}": {"HostName": f"host-{i}", "TailscaleIPs": [ip], "Online": True}
            for i, ip in enumerate(others)
        },
    }
    bin_dir.mkdir(parents=True)
    (bin_dir / "status.json").write_text(json.dumps(status))
    script = bin_dir / "tailscale"
    script.write_text(f'#!/bin/sh\n[ "$1" = status ] && exec cat "{bin_dir}/status.json"\n')
    script.chmod(0o755)


@pytest.fixture
def tailscale_nodes(tmp_path: Path) -> Iterator[list[RingNode]]:
    # Two "devices" on their own loopback addresses with the same exoquic port,
    # as two machines of a tailnet would be; each trusts the other's key.
    port = free_port(socket.SOCK_DGRAM)
    addresses = ["127.0.0.2", "127.0.0.3"]
    nodes = [new_node(tmp_path, f"ts{i}", quic_port=port) for i in range(2)]
    for node, address, other in zip(nodes, addresses, reversed(nodes), strict=True):
        TrustStore.open(node.home).add(other.public_key, other.name)
        bin_dir = node.home / "bin"
        fake_tailscale(bin_dir, address, [a for a in addresses if a != address])
        node.extra = ("--discovery", "tailscale", "--node-host", address)
        node.env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    with running(nodes):
        yield nodes


def test_up_with_tailscale_discovery_forms_a_ring(tailscale_nodes: list[RingNode]) -> None:
    wait_serving(tailscale_nodes, size=2, timeout=180)
    a, b = tailscale_nodes
    assert live_peers(a) == {b.node_id} and live_peers(b) == {a.node_id}


# --- manual peers trusted by id, and live trust changes ------------------------


@pytest.fixture
def trusted_by_id(tmp_path: Path) -> Iterator[list[RingNode]]:
    """Three nodes that know each other only by node id: `exoquic trust add ID`
    and a peers file with ids, hosts and ports (docs/usage.md's manual set-up)."""
    nodes = [new_node(tmp_path, name) for name in ("alpha", "beta", "gamma")]
    for node in nodes:
        peers = []
        for other in nodes:
            if other is not node:
                exoquic(node, "trust", "add", other.node_id, "--name", other.name)
                peers.append({"id": other.node_id, "host": "127.0.0.1", "port": other.quic_port})
        (node.home / "peers.json").write_text(json.dumps({"peers": peers}))
    with running(nodes):
        yield nodes


def test_peers_trusted_by_id_form_a_ring_and_pin_keys(trusted_by_id: list[RingNode]) -> None:
    wait_serving(trusted_by_id, size=3, timeout=180)
    for node in trusted_by_id:
        store = TrustStore.open(node.home)
        for other in trusted_by_id:
            if other is not node:
                entry = store.get(other.node_id)
                assert entry is not None and entry.public_key == other.public_key


def test_trust_changes_reach_running_nodes(trusted_by_id: list[RingNode]) -> None:
    alpha, beta, gamma = trusted_by_id
    wait_serving(trusted_by_id, size=3, timeout=180)

    exoquic(alpha, "trust", "remove", gamma.node_id)
    took = wait_until(
        lambda: gamma.node_id not in live_peers(alpha) and alpha.node_id not in live_peers(gamma),
        TRUST_CHANGE_LIMIT_S + 1.0,  # (+ the polling of this test)
        "alpha drops gamma after `trust remove`",
    )
    assert took <= TRUST_CHANGE_LIMIT_S + 0.5
    # gamma keeps dialling alpha; alpha keeps refusing it.
    time.sleep(3.0)
    assert gamma.node_id not in live_peers(alpha)
    assert alpha.node_id not in live_peers(gamma)
    assert beta.node_id in live_peers(alpha) and beta.node_id in live_peers(gamma)

    exoquic(alpha, "trust", "add", gamma.node_id, "--name", gamma.name)
    wait_until(
        lambda: gamma.node_id in live_peers(alpha),
        TRUST_CHANGE_LIMIT_S + 2.0,  # + one dial attempt
        "alpha links gamma again after `trust add`",
    )
    wait_serving(trusted_by_id, size=3, timeout=120)


def test_a_newly_trusted_device_links_without_a_restart(trusted_by_id: list[RingNode]) -> None:
    """`exoquic pair` (here: `trust add` of a fourth device) reaches a running
    node: the new device links without anyone restarting."""
    alpha = trusted_by_id[0]
    wait_serving(trusted_by_id, size=3, timeout=180)
    delta = new_node(alpha.home.parent, "delta")
    exoquic(delta, "trust", "add", alpha.node_id, "--name", alpha.name)
    (delta.home / "peers.json").write_text(
        json.dumps({"peers": [{"id": alpha.node_id, "host": "127.0.0.1", "port": alpha.quic_port}]})
    )
    with running([delta]):
        wait_until(lambda: _serves(delta), 120, "delta starts")
        time.sleep(3.0)
        assert delta.node_id not in live_peers(alpha), "alpha does not trust delta yet"
        exoquic(alpha, "trust", "add", delta.node_id, "--name", delta.name)
        wait_until(
            lambda: delta.node_id in live_peers(alpha),
            TRUST_CHANGE_LIMIT_S + 2.0,
            "alpha links delta after `trust add`",
        )


def _serves(node: RingNode) -> bool:
    try:
        return bool(node.topology())
    except httpx.HTTPError:
        return False
