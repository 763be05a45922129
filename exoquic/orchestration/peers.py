"""The peers of one node: who it is linked to, and the messages they send.

`Peers` owns everything about links: the peers discovery reports (`known`),
dialling them and accepting their dials, the `Hello` exchange, one current
instance per node, and the links themselves. What happens is published, in
order, on one channel (`events`): a peer joined, a message arrived, a peer
left. `send(node_id, message)` hands a message to a peer's link. Peers never
looks at what the messages mean and never calls into the plan loop or the
ring: they read `events` (see `cluster.py`, which routes them).

A node has one `Peers` per model it serves, each with its own links (one
QUIC connection per peer and model): the network (`network.py`) hands each
accepted link to the `Peers` of the model its `Hello` names. The peers of a
model loaded on demand (`on_demand`) may decline a link (they do not serve
it); those are dialled again only after `DECLINED_RETRY_S`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from exoquic.discovery.peers import PeerEventKind, PeerInfo
from exoquic.identity.trust import TrustStore, TrustStoreError
from exoquic.orchestration.links import Link, LinkError, LinkStatistics, answer_hello, introduce
from exoquic.orchestration.planning import Member
from exoquic.topology import DeviceCapabilities
from exoquic.transport import ConnectionClosed, Endpoint, MessageStream, StreamReset
from exoquic.wire.errors import ErrorCode, RemoteProtocolError
from exoquic.wire.messages import PROTOCOL_VERSION, Hello, Message

log = logging.getLogger(__name__)

DIAL_INTERVAL = 1.0
CONNECT_TIMEOUT = 5.0
KNOWN_PEERS_GRACE = 0.2
"""At start, discovery reports the peers it already knows within this time."""
DECLINED_RETRY_S = 10.0
"""How long the ring of a model loaded on demand waits before dialling again a
peer that said it does not serve the model (it may have pulled it since)."""


class PeerUnavailable(Exception):
    """A message could not be handed to a node (no live link to it)."""


@dataclass(frozen=True)
class PeerJoined:
    """A peer linked and introduced itself; `plan_version` is the newest plan
    version it has seen (None: none yet)."""

    member: Member
    plan_version: int | None


@dataclass(frozen=True)
class PeerLeft:
    """The last link to a peer closed (or a newer instance of it replaced them)."""

    node_id: str
    name: str


@dataclass(frozen=True)
class Received:
    """A message from a linked peer. `link` is where it came from, so that a
    message that breaks the protocol closes that link (`Peers.refuse`)."""

    link: Link
    message: Message

    @property
    def sender(self) -> str:
        return self.link.node_id


PeerEvent = PeerJoined | PeerLeft | Received


class Peers:
    """Links to this node's peers (see the module docstring).

    A `Peers` that never runs (a node alone) has no links: `send` raises
    PeerUnavailable and `events` stays empty.
    """

    def __init__(
        self,
        me: Member,
        model_id: str,
        plan_version: Callable[[], int | None],
        *,
        on_demand: bool = False,
    ) -> None:
        self.me = me
        self.node_id = me.node_id
        self.model_id = model_id
        self.on_demand = on_demand
        # When this process started: a peer that sees a newer instance of a node
        # knows the old one is gone, even before its connections time out.
        self.instance = time.time_ns()
        self.link_stats = LinkStatistics()
        self.known: dict[str, PeerInfo] = {}  # what discovery reports
        self._plan_version = plan_version  # read for each Hello
        self._links: dict[str, list[Link]] = {}
        self._members: dict[str, Member] = {}  # linked peers, as their Hello described them
        self._instances: dict[str, int] = {}
        self._dialing: set[str] = set()
        # The peers the first plan waits for (None: every known one), see
        # `wait_for_known_peers`.
        self.expected: set[str] | None = None
        self._declined: dict[str, float] = {}  # node id -> when to dial it again
        self._endpoint: Endpoint | None = None
        self._changed = trio.Event()  # pulsed when links or known peers change
        self._new_peers = trio.Event()  # wakes the dialer
        # Unbounded, as handling each event is quick and never waits (see cluster.py);
        # a link's receive loop must not stall behind another peer's messages.
        self._publish, self.events = trio.open_memory_channel[PeerEvent](math.inf)

    # --- what the rest of the node uses ---------------------------------------

    async def send(self, node_id: str, message: Message) -> None:
        """Hand `message` to `node_id`'s link; PeerUnavailable without a live one."""
        link = self._link(node_id)
        if link is None:
            raise PeerUnavailable(f"no link to {self.name(node_id)}")
        try:
            await link.send(message)
        except LinkError as exc:
            raise PeerUnavailable(str(exc)) from exc

    async def send_quietly(self, node_id: str, message: Message) -> None:
        """Send, or drop the message (with a debug line) when the peer is gone."""
        try:
            await self.send(node_id, message)
        except PeerUnavailable as exc:
            log.debug("could not send %s: %s", type(message).__name__, exc)

    def members(self) -> list[Member]:
        """The linked peers, as their `Hello` described them."""
        return list(self._members.values())

    def live_peers(self) -> list[str]:
        return [node_id for node_id in self._links if self._link(node_id) is not None]

    def peer_address(self, node_id: str) -> str | None:
        link = self._link(node_id)
        if link is None:
            return None
        host, port = link.connection.remote_address[:2]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"

    @property
    def endpoint(self) -> Endpoint | None:
        return self._endpoint

    def name(self, node_id: str) -> str:
        """`name (node id)` of a linked peer, for log lines; the id alone otherwise."""
        member = self._members.get(node_id)
        return f"{member.name} ({node_id})" if member else node_id

    def refuse(self, link: Link, error: RemoteProtocolError) -> None:
        """A message from `link` broke the protocol: close that link, saying why."""
        log.warning("dropping %s: %s", self.name(link.node_id), error)
        link.connection.close(error.error_code, str(error)[:200])

    async def wait_for_known_peers(self) -> None:
        """Until every peer discovery knows has a link (the caller bounds the wait)."""
        await trio.sleep(KNOWN_PEERS_GRACE)
        while any(
            self._link(node_id) is None and node_id not in self._declined
            for node_id in self.known
            if self.expected is None or node_id in self.expected
        ):
            changed = self._changed
            await changed.wait()

    # --- discovery and trust --------------------------------------------------

    def peer_event(self, kind: PeerEventKind, peer: PeerInfo) -> None:
        if kind in (PeerEventKind.APPEARED, PeerEventKind.UPDATED):
            self.known[peer.node_id] = peer
            self._new_peers.set()
        elif kind is PeerEventKind.EXPIRED:
            self.known.pop(peer.node_id, None)
        self._pulse()

    def trust_changed(self, trust: TrustStore) -> None:
        """The trust store changed under a running node: forget the peers it no
        longer trusts (the endpoint closes their connections); the dialer reaches
        newly trusted ones as discovery reports them."""
        for node_id in [n for n in self.known if trust.get(n) is None]:
            log.info("%s is no longer trusted", self.name(node_id))
            del self.known[node_id]
        self._pulse()

    # --- links ----------------------------------------------------------------

    def hello(self) -> Hello:
        me = self.me
        return Hello(
            PROTOCOL_VERSION,
            me.node_id,
            me.name,
            instance=self.instance,
            model=self.model_id,
            plan_version=self._plan_version(),
            device=me.capabilities.to_dict(),
            on_demand=self.on_demand,
        )

    async def accept(self, messages: MessageStream, hello: Hello) -> None:
        """A peer dialled us for this model and said `hello`: answer, serve the link."""
        try:
            await answer_hello(messages, self.hello())
        except trio.TooSlowError:
            messages.connection.close(ErrorCode.PROTOCOL_ERROR, "no room for our hello in time")
            return
        except (ConnectionClosed, StreamReset, trio.ClosedResourceError):
            return
        await self._run_link(Link(messages, hello, self.link_stats))

    def close_all(self, reason: str) -> None:
        """Close every link (this model is no longer served here)."""
        for links in list(self._links.values()):
            for link in links:
                link.close(reason)

    async def run(
        self,
        endpoint: Endpoint,
        trust: TrustStore,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep a link to every known, trusted peer: dial those without one, every
        second and as soon as discovery reports a peer. (Not on every membership
        change: two instances of one node would otherwise redial in a tight loop.)"""
        self._endpoint = endpoint
        async with trio.open_nursery() as dials:
            task_status.started()
            while True:
                for peer, key in self._to_dial(trust):
                    dials.start_soon(self._dial, peer, key, trust)
                with trio.move_on_after(DIAL_INTERVAL):  # or sooner, for a newly found peer
                    await self._new_peers.wait()
                self._new_peers = trio.Event()

    def _to_dial(self, trust: TrustStore) -> list[tuple[PeerInfo, bytes | None]]:
        """Known, trusted peers without a link or a dial under way, with the key
        to expect: one pinned in the trust store wins over an announced one; with
        neither (trusted by id, found in peers.json) we dial by node id."""
        due = []
        now = trio.current_time()
        for peer in list(self.known.values()):
            if peer.node_id == self.node_id or peer.node_id in self._dialing:
                continue
            if self._declined.get(peer.node_id, now) > now:
                continue
            if self._link(peer.node_id) is not None:
                continue
            entry = trust.get(peer.node_id)
            if entry is not None:  # (trust was removed: discovery will forget it too)
                due.append((peer, entry.public_key or peer.public_key))
        return due

    async def _dial(self, peer: PeerInfo, key: bytes | None, trust: TrustStore) -> None:
        """Link to `peer`. Without `key` (a peer trusted by node id alone) any key
        that hashes to its id is accepted, and pinned in the trust store."""
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
        assert self._endpoint is not None  # set by `run`, which dials
        connection = None
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                if key is None:
                    connection = await self._endpoint.connect_node_id(address, node_id)
                else:
                    connection = await self._endpoint.connect(address, key)
                messages = await MessageStream.open(connection)
                hello = await introduce(messages, self.hello())
            return Link(messages, hello, self.link_stats)
        except (ConnectionClosed, OSError, RemoteProtocolError, trio.TooSlowError) as exc:
            log.debug("cannot link to %s:%d: %s", *address, exc)
            if _declined(exc) and self.on_demand:
                self._declined[node_id] = trio.current_time() + DECLINED_RETRY_S
            if connection is not None:
                connection.close()
            return None

    async def _run_link(self, link: Link) -> None:
        """Register the link, publish what arrives on it, and unregister it at the end."""
        member = self._member_from(link)
        if member is None or not self._current_instance(link):
            return
        self._declined.pop(member.node_id, None)
        links = self._links.setdefault(member.node_id, [])
        links.append(link)
        if len(links) == 1:
            self._members[member.node_id] = member
            log.info("%s joined", self.name(member.node_id))
            self._publish.send_nowait(PeerJoined(member, link.hello.plan_version))
            self._pulse()
        try:
            while (message := await link.receive()) is not None:
                self._publish.send_nowait(Received(link, message))
        except RemoteProtocolError as exc:  # the peer broke the protocol: drop it, say why
            self.refuse(link, exc)
        finally:
            link.close()
            self._forget_link(link)

    def _current_instance(self, link: Link) -> bool:
        """Whether the link is to the newest instance of its node seen so far. A
        newer instance means the node restarted: links to the old one are dead
        (even if their connections have not timed out yet), and so is its state."""
        instance = link.hello.instance
        known = self._instances.get(link.node_id)
        if known is not None and instance < known:
            link.close("an older instance of this node")
            return False
        self._instances[link.node_id] = instance
        if known is not None and instance > known and link.node_id in self._links:
            log.warning("%s restarted", self.name(link.node_id))
            for old in self._links.pop(link.node_id):
                old.close("replaced by a newer instance")
            self._left(link.node_id)
        return True

    def _forget_link(self, link: Link) -> None:
        links = self._links.get(link.node_id, [])
        if link in links:  # (links of a restarted node were dropped already)
            links.remove(link)
            if not links:
                del self._links[link.node_id]
                self._left(link.node_id)

    def _left(self, node_id: str) -> None:
        name = self.name(node_id)
        self._members.pop(node_id, None)
        log.warning("%s is gone", name)
        self._publish.send_nowait(PeerLeft(node_id, name))
        self._pulse()

    def _member_from(self, link: Link) -> Member | None:
        """The peer described by its Hello, or None (link closed) if it cannot join."""
        hello = link.hello
        try:
            device = DeviceCapabilities.from_dict(hello.device)
        except ValueError as exc:
            link.connection.close(ErrorCode.INVALID_FIELD, f"bad device: {exc}"[:200])
            log.warning("%s sent a bad device description: %s", link.node_id, exc)
            return None
        if hello.model != self.model_id:
            log.warning("%s serves %r, not %r: not linking", hello.name, hello.model, self.model_id)
            link.close("serves another model")
            return None
        return Member(link.node_id, hello.name, device)

    def _link(self, node_id: str) -> Link | None:
        return next((link for link in self._links.get(node_id, []) if link.alive), None)

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def _declined(exc: Exception) -> bool:
    """Whether the peer closed the link saying it does not serve the model."""
    return (
        isinstance(exc, ConnectionClosed)
        and exc.by_peer
        and exc.error_code == ErrorCode.MODEL_NOT_SERVED
    )


def _pin(trust: TrustStore, key: bytes) -> bool:
    """Record the key a peer trusted by id proved; False if it is no longer trusted."""
    try:
        trust.pin_key(key)
    except TrustStoreError as exc:
        log.warning("not linking: %s", exc)
        return False
    return True
