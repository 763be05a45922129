"""Opening a node's cluster on the network: QUIC endpoint, discovery, tasks.

`open_cluster` binds the node protocol's UDP port, runs discovery, and runs
the cluster's dialer and plan loop until the block exits.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from exoquic import defaults
from exoquic.discovery.peers import PeerEventKind
from exoquic.discovery.tailscale import Probe
from exoquic.errors import StartupError
from exoquic.identity.keys import Identity
from exoquic.identity.node_id import node_id_from_public_key
from exoquic.identity.trust import TrustStore, TrustStoreError
from exoquic.orchestration.cluster import Cluster, ShardLoader
from exoquic.orchestration.planning import PlanState
from exoquic.orchestration.ring import RingSettings
from exoquic.orchestration.worker import EngineWorker
from exoquic.topology import DEFAULT_MEMORY_FRACTION
from exoquic.transport import Endpoint, TransportConfig, open_endpoint

log = logging.getLogger(__name__)

DEFAULT_NODE_PORT = defaults.NODE_PORT
TRUST_POLL_INTERVAL = 0.5
"""How often a running node looks for changes to its trust store (seconds)."""


@dataclass(frozen=True)
class ClusterSettings:
    """How a node finds and talks to its peers (`exoquic up` options)."""

    identity: Identity
    trust: TrustStore
    name: str
    host: str = "0.0.0.0"
    port: int = DEFAULT_NODE_PORT
    discovery: tuple[str, ...] = ("multicast", "manual")
    peers_file: Path | None = None
    memory_limit: int | None = None
    """Offer at most this many bytes to the cluster (tests simulate small devices)."""
    peer_timeout: float = defaults.PEER_TIMEOUT_S
    """Seconds of silence after which a peer is dead (the QUIC idle timeout)."""
    join_timeout: float = 5.0
    """At start, how long to wait for the known peers before the first plan."""
    settle_time: float = 0.3
    """Membership must stay unchanged this long before a plan is proposed."""
    plan_timeout: float = 60.0
    """How long a request waits for an agreed, loaded plan."""
    memory_fraction: float = DEFAULT_MEMORY_FRACTION
    ring: RingSettings = field(default_factory=RingSettings)


@asynccontextmanager
async def open_cluster(
    settings: ClusterSettings,
    state: PlanState,
    worker: EngineWorker,
    load_shard: ShardLoader,
    model_id: str,
) -> AsyncIterator[Cluster]:
    """Serve the node protocol on a QUIC port, find peers and agree on plans
    until the block exits. The engine is loaded once the first plan is agreed."""
    from exoquic.discovery.service import open_discovery

    cluster = Cluster(
        state,
        worker,
        load_shard,
        model_id=model_id,
        plan_timeout=settings.plan_timeout,
        settle_time=settings.settle_time,
        join_timeout=settings.join_timeout,
        ring=settings.ring,
    )
    trust = settings.trust
    transport = TransportConfig(
        idle_timeout=settings.peer_timeout, keepalive_interval=settings.peer_timeout / 4
    )
    endpoint_cm = open_endpoint(
        settings.identity,
        verify_peer=_verifier(trust),
        stream_handler=cluster.handle_stream,
        host=settings.host,
        port=_node_port(settings.host, settings.port),
        config=transport,
    )
    async with endpoint_cm as endpoint, trio.open_nursery() as nursery:
        cluster.endpoint = endpoint
        cluster._nursery = nursery
        port = endpoint.local_address[1]
        log.info("node %s (%s) listening on UDP port %d", cluster.node_id, settings.name, port)
        async with open_discovery(
            list(settings.discovery),
            identity=settings.identity,
            trust=trust,
            port=port,
            name=settings.name,
            capabilities=state.me.capabilities.to_dict(),
            peers_file=settings.peers_file,
            probe=_prober(endpoint),
        ) as discovery:
            for peer in discovery.peers().values():
                cluster.peer_event(PeerEventKind.APPEARED, peer)
            nursery.start_soon(_follow_discovery, cluster, discovery.events)
            nursery.start_soon(cluster.run_dialer, trust)
            nursery.start_soon(_watch_trust, trust, endpoint, cluster)
            nursery.start_soon(cluster.run_plan_loop)
            yield cluster
            nursery.cancel_scope.cancel()


async def _follow_discovery(cluster: Cluster, events: trio.MemoryReceiveChannel[Any]) -> None:
    async for event in events:
        cluster.peer_event(event.kind, event.peer)


async def _watch_trust(trust: TrustStore, endpoint: Endpoint, cluster: Cluster) -> None:
    """Apply `exoquic pair`, `trust add` and `trust remove` to the running node
    within `TRUST_POLL_INTERVAL`: revoked peers lose their connections and
    leave the cluster; newly trusted ones may connect and be dialled."""
    broken = False
    while True:
        await trio.sleep(TRUST_POLL_INTERVAL)
        try:
            changed = trust.reload_if_changed()
        except TrustStoreError as exc:
            if not broken:  # say it once, keep the trust we had
                log.error("%s (keeping the trust store as it was)", exc)
            broken = True
            continue
        broken = False
        if changed:
            closed = endpoint.recheck_trust()
            log.info("trust store changed%s", f": closed {closed} link(s)" if closed else "")
            cluster.trust_changed(trust)


def _prober(endpoint: Endpoint) -> Probe:
    async def probe(host: str, port: int) -> bytes | None:
        return await endpoint.probe((host, port))

    return probe


def _node_port(host: str, port: int) -> int:
    """`port`, or 0 (any free port) when the default port is taken by another
    node on this host. An explicitly chosen port is never replaced: if it is
    taken, that is a StartupError."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if port != DEFAULT_NODE_PORT or exc.errno != errno.EADDRINUSE:
                raise StartupError(
                    f"cannot listen for peers on UDP {host}:{port}: {exc.strerror or exc} "
                    "(choose another --node-port or --node-host)"
                ) from exc
            log.warning("UDP port %d is taken (%s); using a free port", port, exc)
            return 0
    return port


def _verifier(trust: TrustStore) -> Callable[[bytes], bool]:
    def verify(key: bytes) -> bool:
        # Pairing may have added the key since the file was read: look again.
        if not trust.is_trusted(key):
            trust.reload_if_changed()
        if not trust.is_trusted(key):
            return False
        _pin_if_new(trust, key)
        return True

    return verify


def _pin_if_new(trust: TrustStore, key: bytes) -> None:
    """A peer trusted by node id alone just proved this key: pin it, so a
    different key with a colliding id can never be accepted later."""
    entry = trust.get(node_id_from_public_key(key))
    if entry is not None and entry.public_key is None:
        try:
            trust.pin_key(key)
        except TrustStoreError as exc:
            log.warning("cannot pin the key of %s: %s", entry.node_id, exc)
