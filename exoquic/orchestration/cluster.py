"""A model's ring on this node: its parts, and `open_cluster` / `open_ring`,
which start them on the network.

A `Cluster` is one model's ring as this node sees it, four parts, each the
one owner of its state:

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

Every ring of a node shares one `Network` (network.py: the QUIC endpoint,
discovery, trust): `open_cluster` opens it for the node's own model, and
models loaded on demand add their rings to it with `open_ring`. Such a ring
also has a `Demand` (demand.py): who wants the model kept loaded.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from exoquic import defaults
from exoquic.identity.keys import Identity
from exoquic.identity.trust import TrustStore
from exoquic.orchestration.demand import Demand
from exoquic.orchestration.network import Network, open_network
from exoquic.orchestration.peers import PeerJoined, PeerLeft, Peers, Received
from exoquic.orchestration.planning import Member, PlanState
from exoquic.orchestration.plans import PlanLoop, Plans, ShardLoader
from exoquic.orchestration.ring import Ring, RingSettings
from exoquic.orchestration.worker import EngineWorker
from exoquic.topology import DEFAULT_MEMORY_FRACTION
from exoquic.wire.errors import RemoteProtocolError
from exoquic.wire.messages import (
    Forward,
    Interest,
    ModelProgress,
    Release,
    RequestFailed,
    TokenResult,
)

log = logging.getLogger(__name__)

ON_DEMAND_JOIN_S = 20.0
"""How long a new ring of a model loaded on demand waits, before its first plan,
for the linked peers that may join it (each answers within seconds: it joins or
declines)."""

DEFAULT_NODE_PORT = defaults.NODE_PORT

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
        on_demand: bool = False,
        wanted: bool = True,
    ) -> None:
        self.node_id = state.me.node_id
        self.worker = worker
        self.plans = Plans(state, plan_timeout)
        self.peers = Peers(
            state.me, state.model.model_id, lambda: _seen_version(state), on_demand=on_demand
        )
        # Who wants a model loaded on demand kept (None: this node's own model).
        self.demand = Demand(self.peers, wanted) if on_demand else None
        self.network: Network | None = None  # set by `open_ring`; None: a node alone
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
                    if self.demand is not None:
                        node_id = event.member.node_id
                        steps.start_soon(self.peers.send_quietly, node_id, self.demand.greeting())
                elif isinstance(event, PeerLeft):
                    self.plan_loop.peer_left(event.node_id)
                    if self.demand is not None:
                        self.demand.peer_left(event.node_id)
                    self.ring.peer_left(event.node_id, f"{event.name} left the ring")

    def _receive(self, event: Received, steps: trio.Nursery) -> None:
        if isinstance(event.message, Interest) and self.demand is not None:
            self.demand.receive(event.sender, event.message)
            return
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
    for this node's own model until the block exits. The engine is loaded once
    the first plan is agreed. Models loaded on demand join the same network
    (`Cluster.network`) with `open_ring`."""
    async with (
        open_network(settings, state.me.capabilities) as network,
        open_ring(network, state, worker, load_shard) as cluster,
    ):
        yield cluster


@asynccontextmanager
async def open_ring(
    network: Network,
    state: PlanState,
    worker: EngineWorker,
    load_shard: ShardLoader,
    *,
    on_demand: bool = False,
    wanted: bool = True,
) -> AsyncIterator[Cluster]:
    """Serve `state`'s model in a ring over `network` until the block exits:
    link to the peers that serve it, agree on plans, load this node's shard.

    `on_demand`: a model loaded on demand, whose ring peers with the model
    cached may join (`Hello.on_demand`); `wanted` is whether this node wants it
    kept loaded at first (a node that joined for its peers does not).
    """
    settings = network.settings
    join_timeout = settings.join_timeout
    if on_demand:  # its peers may be starting their rings of it (its header from the hub)
        join_timeout = max(join_timeout, ON_DEMAND_JOIN_S)
    cluster = Cluster(
        state,
        worker,
        load_shard,
        plan_timeout=settings.plan_timeout,
        settle_time=settings.settle_time,
        join_timeout=join_timeout,
        ring_settings=settings.ring_settings,
        on_demand=on_demand,
        wanted=wanted,
    )
    cluster.network = network
    peers = cluster.peers
    if on_demand:  # peers the node is linked to now, in any ring, are worth waiting for
        peers.expected = set(network.peer_memory())
    assert network.endpoint is not None
    async with trio.open_nursery() as nursery:
        await nursery.start(cluster.route)
        network.add_ring(peers)
        try:
            await nursery.start(cluster.plan_loop.run)
            await nursery.start(peers.run, network.endpoint, network.trust)
            yield cluster
        finally:
            network.remove_ring(peers, "no longer serves this model")
            nursery.cancel_scope.cancel()


def _seen_version(state: PlanState) -> int | None:
    """The newest plan version this node has seen, for its `Hello`."""
    return None if state.highest_version < 0 else state.highest_version


def _no_loading(shard: Any) -> Any:
    raise RuntimeError("a node alone has its engine loaded by its creator")
