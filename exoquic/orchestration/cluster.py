"""A node's cluster: its parts, and `open_cluster`, which starts them on the network.

A `Cluster` is four parts, each the one owner of its state:

- `Peers` (peers.py): links, dialling and accepting, `Hello`, instances. It
  publishes membership events and messages on one channel and offers `send`.
- `Plans` and `PlanLoop` (plans.py): membership -> proposals -> readiness ->
  loading; the record of which plan is adopted and which shard this node holds.
- `Ring` (ring.py): the request flow, as origin and as a shard of others'.
- the `EngineWorker` (worker.py), which runs the engine on its own thread.

Data flows one way: `open_cluster`'s router reads `Peers.events` and hands
each event to the plan loop or the ring; the plan loop tells the ring what
plan changes mean for requests; the ring reads plans and sends through
`Peers`. Nothing calls back up. `Cluster.alone` is the same object for a
node alone, with no network at all: a ring of one.
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
from exoquic.orchestration.peers import PeerJoined, PeerLeft, Peers, Received
from exoquic.orchestration.planning import Member, PlanState
from exoquic.orchestration.plans import PlanLoop, Plans, ShardLoader
from exoquic.orchestration.ring import Ring, RingSettings
from exoquic.orchestration.worker import EngineWorker
from exoquic.topology import DEFAULT_MEMORY_FRACTION
from exoquic.transport import Endpoint, TransportConfig, open_endpoint
from exoquic.wire.errors import RemoteProtocolError
from exoquic.wire.messages import Forward, ModelProgress, Release, RequestFailed, TokenResult

log = logging.getLogger(__name__)

DEFAULT_NODE_PORT = defaults.NODE_PORT
TRUST_POLL_INTERVAL = 0.5
"""How often a running node looks for changes to its trust store (seconds)."""

_RING_MESSAGES = (Forward, TokenResult, RequestFailed, Release)


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
    ring_settings: RingSettings = field(default_factory=RingSettings)


class Cluster:
    """This node's parts (see the module docstring); `open_cluster` runs them."""

    def __init__(
        self,
        state: PlanState,
        worker: EngineWorker,
        load_shard: ShardLoader,
        *,
        plan_timeout: float = 60.0,
        settle_time: float = 0.3,
        join_timeout: float = 5.0,
        ring_settings: RingSettings | None = None,
    ) -> None:
        self.node_id = state.me.node_id
        self.worker = worker
        self.plans = Plans(state, plan_timeout)
        self.peers = Peers(state.me, state.model.model_id, lambda: _seen_version(state))
        self.ring = Ring(self.node_id, self.plans, self.peers.send, worker, ring_settings)
        self.plan_loop = PlanLoop(
            self.plans,
            self.peers,
            self.ring,
            worker,
            load_shard,
            settle_time=settle_time,
            join_timeout=join_timeout,
        )

    @classmethod
    def alone(cls, worker: EngineWorker, model_id: str, num_layers: int, member: Member) -> Cluster:
        """A node alone whose engine already holds the whole model: plan 0, active."""
        return cls(Plans.alone(member, model_id, num_layers).state, worker, _no_loading)

    def status(self) -> str:
        return self.plans.status()

    def preparation_states(self) -> dict[str, ModelProgress]:
        return self.plan_loop.preparation_states()

    def statistics(self) -> dict[str, Any]:
        worker = self.worker.statistics()
        return {
            "ring": self.ring.statistics(),
            "links": self.peers.link_stats.as_dict(),
            "worker": {
                "batches": worker.batches,
                "forwarded_items": worker.forwarded_items,
                "largest_batch": worker.largest_batch,
                "batch_limit": self.worker.batch_limit,  # decode steps per batch now
                "compute_seconds": worker.compute_seconds,
                "engine_seconds": worker.engine_seconds,
                # Positions the engine ran through its layers (a prefix cache hit runs fewer).
                "positions_run": self.worker.engine.positions_run,
            },
        }

    async def route(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hand each of the peers' events to the part that owns what it changes
        (runs forever). Forward steps are queued on the engine here, in the
        order they arrived; their follow-up (run, pass on) gets a task each."""
        async with trio.open_nursery() as steps:
            task_status.started()
            async for event in self.peers.events:
                if isinstance(event, Received):
                    self._receive(event, steps)
                elif isinstance(event, PeerJoined):
                    self.plan_loop.peer_joined(event.member, event.plan_version)
                elif isinstance(event, PeerLeft):
                    self.plan_loop.peer_left(event.node_id)
                    self.ring.peer_left(event.node_id, f"{event.name} left the ring")

    def _receive(self, event: Received, steps: trio.Nursery) -> None:
        if isinstance(event.message, _RING_MESSAGES):
            follow_up = self.ring.receive(event.sender, event.message)
            if follow_up is not None:
                steps.start_soon(follow_up)
            return
        try:
            self.plan_loop.receive(event.sender, event.message)
        except RemoteProtocolError as exc:  # a bad plan, an unexpected message
            self.peers.refuse(event.link, exc)


@asynccontextmanager
async def open_cluster(
    settings: ClusterSettings,
    state: PlanState,
    worker: EngineWorker,
    load_shard: ShardLoader,
) -> AsyncIterator[Cluster]:
    """Serve the node protocol on a QUIC port, find peers and agree on plans
    until the block exits. The engine is loaded once the first plan is agreed."""
    from exoquic.discovery.service import open_discovery

    cluster = Cluster(
        state,
        worker,
        load_shard,
        plan_timeout=settings.plan_timeout,
        settle_time=settings.settle_time,
        join_timeout=settings.join_timeout,
        ring_settings=settings.ring_settings,
    )
    peers, trust = cluster.peers, settings.trust
    transport = TransportConfig(
        idle_timeout=settings.peer_timeout, keepalive_interval=settings.peer_timeout / 4
    )
    endpoint_cm = open_endpoint(
        settings.identity,
        verify_peer=_verifier(trust),
        stream_handler=peers.handle_stream,
        host=settings.host,
        port=_node_port(settings.host, settings.port),
        config=transport,
    )
    async with endpoint_cm as endpoint, trio.open_nursery() as nursery:
        port = endpoint.local_address[1]
        log.info("node %s (%s) listening on UDP port %d", cluster.node_id, settings.name, port)
        await nursery.start(cluster.route)
        await nursery.start(cluster.plan_loop.run)
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
                peers.peer_event(PeerEventKind.APPEARED, peer)
            nursery.start_soon(_follow_discovery, peers, discovery.events)
            await nursery.start(peers.run, endpoint, trust)
            nursery.start_soon(_watch_trust, trust, endpoint, peers)
            yield cluster
            nursery.cancel_scope.cancel()


async def _follow_discovery(peers: Peers, events: trio.MemoryReceiveChannel[Any]) -> None:
    async for event in events:
        peers.peer_event(event.kind, event.peer)


async def _watch_trust(trust: TrustStore, endpoint: Endpoint, peers: Peers) -> None:
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
            peers.trust_changed(trust)


def _seen_version(state: PlanState) -> int | None:
    """The newest plan version this node has seen, for its `Hello`."""
    return None if state.highest_version < 0 else state.highest_version


def _no_loading(shard: Any) -> Any:
    raise RuntimeError("a node alone has its engine loaded by its creator")


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
