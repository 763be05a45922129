"""The cluster around one node: links to peers, plan agreement, message routing.

A `Cluster` keeps one link per trusted peer it found (it dials them; they
dial it), feeds membership, proposals and readiness to its `PlanState`, loads
this node's shard whenever the adopted plan changes it, and routes ring
messages between links and the node's `Ring`. The sequence, and why, is in
docs/ring.md. `Cluster.local` is the same object for a node alone, with
no network at all: a ring of one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import trio

from exoquic.discovery.peers import PeerEventKind, PeerInfo
from exoquic.download.progress import reporting_to
from exoquic.identity.trust import TrustStore, TrustStoreError
from exoquic.models.shard import Shard
from exoquic.models.weights import ShardWeights
from exoquic.orchestration.generation import UnavailableError
from exoquic.orchestration.links import Link, LinkError, LinkGate, LinkStatistics, introduce
from exoquic.orchestration.planning import Member, PlanKey, PlanState
from exoquic.orchestration.progress import Preparation, ProgressGate
from exoquic.orchestration.ring import PeerUnavailable, Ring, RingSettings
from exoquic.orchestration.worker import EngineWorker, Job
from exoquic.topology import (
    Assignment,
    DeviceCapabilities,
    InsufficientMemoryError,
    ModelRequirements,
    Plan,
)
from exoquic.transport import (
    ConnectionClosed,
    Endpoint,
    MessageStream,
    QuicStream,
)
from exoquic.wire.errors import ErrorCode, RemoteProtocolError
from exoquic.wire.messages import (
    PROTOCOL_VERSION,
    Forward,
    Hello,
    Message,
    ModelProgress,
    PlanProposal,
    PlanReady,
    Release,
    RequestFailed,
    TokenResult,
)

log = logging.getLogger(__name__)

DIAL_INTERVAL = 1.0
CONNECT_TIMEOUT = 5.0
LOAD_RETRY_DELAY = 10.0
"""After a failed load (say, the hub unreachable), try again this much later
unless a new plan or a membership change comes first."""

ShardLoader = Callable[[Shard], ShardWeights]


class Cluster:
    """Membership, plan agreement and message routing for one node (a `Router`)."""

    def __init__(
        self,
        state: PlanState,
        worker: EngineWorker,
        load_shard: ShardLoader,
        *,
        model_id: str,
        plan_timeout: float = 60.0,
        settle_time: float = 0.3,
        join_timeout: float = 5.0,
        ring: RingSettings | None = None,
    ) -> None:
        self.state = state
        self.node_id = state.me.node_id
        self.worker = worker
        self.model_id = model_id
        self.ring = Ring(self, worker, ring)
        self.plan_timeout = plan_timeout
        self.settle_time = settle_time
        self.join_timeout = join_timeout
        self.link_stats = LinkStatistics()
        self.endpoint: Endpoint | None = None
        self.known: dict[str, PeerInfo] = {}
        self._load_shard = load_shard
        self._shard: Shard | None = None
        self._links: dict[str, list[Link]] = {}
        self._link_gate = LinkGate()  # one link per connection
        self._dialing: set[str] = set()
        self._changed = trio.Event()
        self._new_peers = trio.Event()  # wakes the dialer
        self._membership_changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        # When this process started: a peer that sees a newer instance of a node
        # knows the old one is gone, even before its connections time out.
        self.instance = time.time_ns()
        self._instances: dict[str, int] = {}
        # This node's model preparation, and the latest one each linked peer reported.
        self.preparation = Preparation(model_id)
        self.peer_progress: dict[str, ModelProgress] = {}
        self._preparation_changed = trio.Event()

    @classmethod
    def local(cls, worker: EngineWorker, model_id: str, num_layers: int, member: Member) -> Cluster:
        """A node alone whose engine already holds the whole model: plan 0, active."""
        shard = Shard.whole(model_id, num_layers)
        requirements = ModelRequirements(model_id, num_layers, 1)
        state = PlanState(member, requirements)
        cluster = cls(state, worker, _no_loading, model_id=model_id)
        plan = Plan(0, model_id, (Assignment(member.node_id, shard),))
        state.offer(plan, member.node_id)
        state.mark_loaded((0, member.node_id))
        cluster._shard = shard
        return cluster

    # --- the Router interface used by the ring ------------------------------

    async def send(self, node_id: str, message: Message) -> None:
        if node_id == self.node_id:
            await self.ring.deliver_local(message)
            return
        link = self._link(node_id)
        if link is None:
            raise PeerUnavailable(f"no link to {self._name(node_id)}")
        try:
            await link.send(message)
        except LinkError as exc:
            raise PeerUnavailable(str(exc)) from exc

    def serving_plan(self, version: int) -> Plan | None:
        plan = self.state.loaded_plan()
        return plan if plan is not None and plan.version == version else None

    async def wait_usable_plan(self, newer_than: int) -> Plan:
        with trio.move_on_after(self.plan_timeout):
            while True:
                changed = self._changed
                if self.state.unavailable is not None:
                    raise UnavailableError(self.state.unavailable)
                plan = self.state.active_plan()
                if plan is not None and plan.version > newer_than:
                    return plan
                await changed.wait()
        raise UnavailableError(
            f"the cluster agreed on no plan within {self.plan_timeout:.0f} s "
            f"({self.status()}); see GET /v1/topology"
        )

    # --- status ---------------------------------------------------------------

    @property
    def shard(self) -> Shard | None:
        return self._shard

    def status(self) -> str:
        if self.state.unavailable is not None:
            return "unavailable"
        if self.state.active_plan() is not None:
            return "serving"
        if self.state.adopted is not None and self.state.loaded_key != self.state.adopted_key:
            return "loading"
        return "forming"

    def live_peers(self) -> list[str]:
        return [node_id for node_id in self._links if self._link(node_id) is not None]

    def peer_address(self, node_id: str) -> str | None:
        link = self._link(node_id)
        if link is None:
            return None
        host, port = link.connection.remote_address[:2]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    # --- links --------------------------------------------------------------

    def _link(self, node_id: str) -> Link | None:
        return next((link for link in self._links.get(node_id, []) if link.alive), None)

    def _name(self, node_id: str) -> str:
        member = self.state.peers.get(node_id)
        return f"{member.name} ({node_id})" if member else node_id

    def hello(self) -> Hello:
        me = self.state.me
        capabilities = {
            "device": me.capabilities.to_dict(),
            "model": self.model_id,
            "plan_version": self.state.highest_version,
            "instance": self.instance,
        }
        return Hello(PROTOCOL_VERSION, me.node_id, me.name, capabilities)

    async def handle_stream(self, stream: QuicStream) -> None:
        """The endpoint's stream handler: a peer dialled us and opened its link stream."""
        if not self._link_gate.admit(stream):
            return
        messages = MessageStream(stream)
        try:
            hello = await introduce(messages, self.hello(), dialer=False)
        except trio.TooSlowError:
            stream.connection.close(ErrorCode.PROTOCOL_ERROR, "no hello in time")
            return
        await self._run_link(Link(messages, hello, self.link_stats))

    async def _dial(self, peer: PeerInfo, key: bytes | None, trust: TrustStore) -> None:
        """Link to `peer`. Without `key` (a peer trusted by node id alone) any key
        that hashes to its id is accepted, and pinned in the trust store."""
        assert self.endpoint is not None
        self._dialing.add(peer.node_id)
        try:
            for address in peer.addresses:
                link = await self._connect((address, peer.port), peer.node_id, key)
                if link is None:
                    continue
                if key is None and not _pin(trust, link.connection.peer_public_key):
                    link.close("no longer trusted")
                    return
                await self._run_link(link)
                return
        finally:
            self._dialing.discard(peer.node_id)

    async def _connect(
        self, address: tuple[str, int], node_id: str, key: bytes | None
    ) -> Link | None:
        assert self.endpoint is not None
        connection = None
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                if key is None:
                    connection = await self.endpoint.connect_node_id(address, node_id)
                else:
                    connection = await self.endpoint.connect(address, key)
                messages = await MessageStream.open(connection)
                hello = await introduce(messages, self.hello(), dialer=True)
            return Link(messages, hello, self.link_stats)
        except (ConnectionClosed, OSError, RemoteProtocolError, trio.TooSlowError) as exc:
            log.debug("cannot link to %s:%d: %s", *address, exc)
            if connection is not None:
                connection.close()
            return None

    async def _run_link(self, link: Link) -> None:
        """Register the link, serve what arrives on it, and unregister it at the end."""
        member = self._member_from(link)
        if member is None or not self._current_instance(link):
            return
        links = self._links.setdefault(member.node_id, [])
        links.append(link)
        if len(links) == 1:
            self._peer_up(member, link.hello)
        try:
            await self._send_ready(link)
            await self._send_progress(link)
            while (message := await link.receive()) is not None:
                self._dispatch(link, message)
        except RemoteProtocolError as exc:  # the peer broke the protocol: drop it, say why
            log.warning("dropping %s: %s", self._name(link.node_id), exc)
            link.connection.close(exc.error_code, str(exc)[:200])
        finally:
            link.close()
            self._forget_link(link)

    def _current_instance(self, link: Link) -> bool:
        """Whether the link is to the newest instance of its node seen so far. A
        newer instance means the node restarted: links to the old one are dead
        (even if their connections have not timed out yet), and so is its state."""
        seen = link.hello.capabilities.get("instance")
        instance = seen if isinstance(seen, int) else 0
        known = self._instances.get(link.node_id)
        if known is not None and instance < known:
            link.close("an older instance of this node")
            return False
        self._instances[link.node_id] = instance
        if known is not None and instance > known and link.node_id in self._links:
            log.warning("%s restarted", self._name(link.node_id))
            for old in self._links.pop(link.node_id):
                old.close("replaced by a newer instance")
            self._peer_down(link.node_id)
        return True

    def _forget_link(self, link: Link) -> None:
        links = self._links.get(link.node_id, [])
        if link in links:  # (links of a restarted node were dropped already)
            links.remove(link)
            if not links:
                del self._links[link.node_id]
                self._peer_down(link.node_id)

    def _member_from(self, link: Link) -> Member | None:
        """The peer described by its Hello, or None (link closed) if it cannot join."""
        caps = link.hello.capabilities
        try:
            device = DeviceCapabilities.from_dict(caps.get("device"))
        except ValueError as exc:
            link.connection.close(ErrorCode.INVALID_FIELD, f"bad capabilities: {exc}"[:200])
            log.warning("%s sent bad capabilities: %s", link.node_id, exc)
            return None
        if caps.get("model") != self.model_id:
            log.warning(
                "%s serves %r, not %r: not linking",
                link.hello.name,
                caps.get("model"),
                self.model_id,
            )
            link.close("serves another model")
            return None
        return Member(link.node_id, link.hello.name, device)

    def _peer_up(self, member: Member, hello: Hello) -> None:
        seen = hello.capabilities.get("plan_version")
        self.state.peer_up(member, seen if isinstance(seen, int) else -1)
        log.info("%s joined", self._name(member.node_id))
        self._membership_changed.set()
        self._pulse()

    def _peer_down(self, node_id: str) -> None:
        name = self._name(node_id)
        self.state.peer_down(node_id)
        self.peer_progress.pop(node_id, None)
        log.warning("%s is gone", name)
        self.ring.interrupt(lambda plan: node_id in plan.node_ids, f"{name} left the ring")
        self.ring.release_from(node_id)
        self._membership_changed.set()
        self._pulse()

    def _pulse(self) -> None:
        """Wake everything waiting for a change of membership or plan."""
        self._changed.set()
        self._changed = trio.Event()

    # --- incoming messages --------------------------------------------------

    def _dispatch(self, link: Link, message: Message) -> None:
        if isinstance(message, Forward):
            self._on_forward(link, message)
        elif isinstance(message, TokenResult | RequestFailed | Release):
            self.ring.receive(message)
        elif isinstance(message, PlanProposal):
            self._on_proposal(link, message)
        elif isinstance(message, PlanReady):
            self.state.on_ready(link.node_id, (message.version, message.proposer))
            self._pulse()
        elif isinstance(message, ModelProgress):
            self.peer_progress[link.node_id] = message
        else:
            raise RemoteProtocolError(
                f"unexpected {type(message).__name__} on a ring link", ErrorCode.UNEXPECTED_MESSAGE
            )

    def _on_forward(self, link: Link, message: Forward) -> None:
        assert self._nursery is not None
        accepted = self.ring.accept_forward(message, link.node_id)
        if isinstance(accepted, Job):
            self._nursery.start_soon(self.ring.finish_forward, message, accepted)
        elif accepted is not None:  # a refusal, for the request's origin
            origin = message.origin or link.node_id
            self._nursery.start_soon(self.ring.send_quietly, origin, accepted)

    def _on_proposal(self, link: Link, message: PlanProposal) -> None:
        try:
            plan = Plan.from_dict(message.plan)
        except ValueError as exc:
            raise RemoteProtocolError(f"bad plan: {exc}", ErrorCode.INVALID_FIELD) from exc
        if plan.model_id != self.model_id:
            raise RemoteProtocolError(f"plan for {plan.model_id!r}", ErrorCode.INVALID_FIELD)
        self._adopt(plan, link.node_id)

    def _adopt(self, plan: Plan, proposer: str) -> None:
        if self.state.offer(plan, proposer):
            log.info(
                "adopted plan %d from %s: %s", plan.version, self._name(proposer), _ranges(plan)
            )
            self.ring.interrupt(lambda p: p.version < plan.version, "the plan changed")
            self._pulse()

    # --- the plan loop ------------------------------------------------------

    async def run_plan_loop(self) -> None:
        """Propose, load and announce plans as membership changes (runs forever)."""
        assert self._nursery is not None
        self._nursery.start_soon(self._report_progress)  # lives as long as the plan loop
        await self._wait_for_known_peers()
        self._membership_changed.set()
        while True:
            changed = self._changed
            if self._membership_changed.is_set():
                await self._settle()
                self._membership_changed = trio.Event()
                self._check_capacity()
            if self.state.proposal_due():
                self._propose()
            adopted = self.state.adopted
            if adopted is not None and self.state.loaded_key != self.state.adopted_key:
                await self._load(adopted.plan, (adopted.plan.version, adopted.proposer))
                continue
            await changed.wait()

    async def _wait_for_known_peers(self) -> None:
        """At start: give the peers discovery already knows a chance to link first,
        so the first plan spans them instead of being replaced at once."""
        with trio.move_on_after(self.join_timeout):
            await trio.sleep(0.2)  # discovery reports what it knows at start
            while any(self._link(node_id) is None for node_id in self.known):
                changed = self._changed
                await changed.wait()

    async def _settle(self) -> None:
        """Wait until membership stayed unchanged for `settle_time`."""
        while True:
            self._membership_changed = trio.Event()
            with trio.move_on_after(self.settle_time):
                await self._membership_changed.wait()
                continue
            return

    def _check_capacity(self) -> None:
        reason = self.state.check_capacity()
        if reason is not None:
            log.error("the ring cannot serve: %s", reason)
            self.ring.fail_all(reason)
            self._pulse()

    def _propose(self) -> None:
        try:
            plan = self.state.propose()
        except InsufficientMemoryError as exc:
            self.ring.fail_all(str(exc))
            self._pulse()
            return
        assert self._nursery is not None
        for node_id in self.live_peers():
            self._nursery.start_soon(self._send_quietly, node_id, PlanProposal(plan.to_dict()))
        self._adopt(plan, self.node_id)

    async def _load(self, plan: Plan, key: PlanKey) -> None:
        """Hold this node's shard of `plan` (reloading only if it changed), then say so."""
        shard = plan.shard_of(self.node_id)
        if shard != self._shard:
            if shard is None:
                log.info("plan %d leaves this node out: unloading", plan.version)
                await self.worker.call(self.worker.engine.unload)
            else:
                log.info("loading layers %d-%d", shard.start_layer, shard.end_layer)
                try:
                    weights = await self._fetch_weights(shard)
                    await self.worker.load(weights)
                except Exception as exc:  # a failed download must not take the node down
                    await self._load_failed(shard, key, exc)
                    return
                del weights
            self.ring.forget_served()
            self._shard = shard
        self.preparation.ready()
        self._wake_progress_reporter()
        self.state.mark_loaded(key)
        log.info("ready for plan %d", plan.version)
        for node_id in self.live_peers():
            await self._send_quietly(node_id, PlanReady(*key))
        self._pulse()

    # --- preparation progress -------------------------------------------------

    async def _fetch_weights(self, shard: Shard) -> ShardWeights:
        """Run the shard loader (download, then read) with its progress reported."""
        download = self.preparation.start(trio.current_time())
        self._wake_progress_reporter()
        with reporting_to(download):
            weights = await trio.to_thread.run_sync(self._load_shard, shard)
        self.preparation.loading()
        self._wake_progress_reporter()
        return weights

    async def _load_failed(self, shard: Shard, key: PlanKey, exc: Exception) -> None:
        """Report the failure, then pause before the plan loop tries again."""
        log.error("cannot load layers %d-%d: %s", shard.start_layer, shard.end_layer, exc)
        log.debug("load failure", exc_info=exc)
        self.preparation.fail(str(exc) or type(exc).__name__)
        self._wake_progress_reporter()
        with trio.move_on_after(LOAD_RETRY_DELAY):
            while self.state.adopted_key == key and not self._membership_changed.is_set():
                changed = self._changed
                await changed.wait()

    def _wake_progress_reporter(self) -> None:
        self._preparation_changed.set()
        self._preparation_changed = trio.Event()

    def preparation_states(self) -> dict[str, ModelProgress]:
        """The latest preparation state of this node and of each linked peer."""
        states = dict(self.peer_progress)
        mine = self.preparation.current(trio.current_time())
        if mine is not None:
            states[self.node_id] = mine
        return states

    async def _report_progress(self) -> None:
        """Send this node's preparation state to every linked peer whenever it
        changes, at most twice a second (runs forever). One send after another
        keeps the messages in order on every link."""
        gate = ProgressGate()
        while True:
            changed = self._preparation_changed
            now = trio.current_time()
            state = self.preparation.current(now)
            message = gate.poll(state, now)
            if message is not None:
                for node_id in self.live_peers():
                    await self._send_quietly(node_id, message)
            with trio.move_on_at(gate.next_poll(state, now)):
                await changed.wait()

    async def _send_progress(self, link: Link) -> None:
        state = self.preparation.current(trio.current_time())
        if state is not None:
            with suppress(LinkError):
                await link.send(state)

    async def _send_ready(self, link: Link) -> None:
        key = self.state.loaded_key
        if key is not None:
            with suppress(LinkError):
                await link.send(PlanReady(*key))

    async def _send_quietly(self, node_id: str, message: Message) -> None:
        try:
            await self.send(node_id, message)
        except PeerUnavailable as exc:
            log.debug("could not send %s: %s", type(message).__name__, exc)

    # --- finding peers ------------------------------------------------------

    async def run_dialer(self, trust: TrustStore) -> None:
        """Keep a link to every known, trusted peer: dial those without one, every
        second and as soon as discovery reports a peer. (Not on every membership
        change: two instances of one node would otherwise redial in a tight loop.)"""
        assert self._nursery is not None
        while True:
            for peer in list(self.known.values()):
                if peer.node_id == self.node_id or peer.node_id in self._dialing:
                    continue
                if self._link(peer.node_id) is not None:
                    continue
                entry = trust.get(peer.node_id)
                if entry is None:
                    continue  # trust was removed; discovery will forget it too
                # A key pinned in the trust store wins over an announced one; with
                # neither (trusted by id, found in peers.json) we dial by node id.
                key = entry.public_key or peer.public_key
                self._nursery.start_soon(self._dial, peer, key, trust)
            with trio.move_on_after(DIAL_INTERVAL):  # or sooner, for a newly found peer
                await self._new_peers.wait()
            self._new_peers = trio.Event()

    def trust_changed(self, trust: TrustStore) -> None:
        """The trust store changed under a running node: forget the peers it no
        longer trusts (the endpoint closes their connections); the dialer reaches
        newly trusted ones as discovery reports them."""
        for node_id in [n for n in self.known if trust.get(n) is None]:
            log.info("%s is no longer trusted", self._name(node_id))
            del self.known[node_id]
        self._pulse()

    def peer_event(self, kind: PeerEventKind, peer: PeerInfo) -> None:
        if kind in (PeerEventKind.APPEARED, PeerEventKind.UPDATED):
            self.known[peer.node_id] = peer
            self._new_peers.set()
        elif kind is PeerEventKind.EXPIRED:
            self.known.pop(peer.node_id, None)
        self._pulse()

    # --- reporting ----------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        worker = self.worker.statistics()
        return {
            "ring": self.ring.statistics(),
            "links": self.link_stats.as_dict(),
            "worker": {
                "batches": worker.batches,
                "forwarded_items": worker.forwarded_items,
                "largest_batch": worker.largest_batch,
                "batch_limit": self.worker.batch_limit,  # decode steps per batch now
                "compute_seconds": worker.compute_seconds,
                "engine_seconds": worker.engine_seconds,
            },
        }


def _no_loading(shard: Shard) -> ShardWeights:
    raise RuntimeError("a local node's engine was loaded by its creator")


def _pin(trust: TrustStore, key: bytes) -> bool:
    """Record the key a peer trusted by id proved; False if it is no longer trusted."""
    try:
        trust.pin_key(key)
    except TrustStoreError as exc:
        log.warning("not linking: %s", exc)
        return False
    return True


def _ranges(plan: Plan) -> str:
    return ", ".join(
        f"{a.node_id} {a.shard.start_layer}-{a.shard.end_layer}" for a in plan.assignments
    )
