"""This node on the network: one QUIC endpoint and discovery, shared by the
ring of every model the node serves.

A node serves its own model (`exoquic up --model`) in a ring, and may serve
other cached models on demand, each in a ring of its own (`modelset.py`). The
`Network` is what those rings share: the endpoint, the peers discovery
reports, the trust store. Each ring has its own `Peers`, with its own links
(one QUIC connection per peer and model), so that a model's messages never
need to name their model and a broken link of one model leaves the others up.

Incoming links are handed to the ring of the model their `Hello` names. A
`Hello` for a model with no ring here is declined (`MODEL_NOT_SERVED`); when
it comes from a ring of a model loaded on demand (`Hello.on_demand`), the
node's `join` hook is asked first, so that a node with that model cached
starts its own ring of it and answers on that ring (see docs/ring.md).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from exoquic import defaults
from exoquic.discovery.peers import PeerEventKind, PeerInfo
from exoquic.discovery.tailscale import Probe
from exoquic.errors import StartupError
from exoquic.identity.node_id import node_id_from_public_key
from exoquic.identity.trust import TrustStore, TrustStoreError
from exoquic.orchestration.links import LinkGate, receive_hello
from exoquic.orchestration.peers import Peers
from exoquic.topology import DeviceCapabilities
from exoquic.transport import (
    ConnectionClosed,
    Endpoint,
    MessageStream,
    QuicStream,
    StreamReset,
    TransportConfig,
    open_endpoint,
)
from exoquic.transport.errors import ErrorCode as TransportErrorCode
from exoquic.wire.errors import ErrorCode, RemoteProtocolError

if TYPE_CHECKING:
    from exoquic.orchestration.cluster import ClusterSettings

log = logging.getLogger(__name__)

DEFAULT_NODE_PORT = defaults.NODE_PORT
TRUST_POLL_INTERVAL = 0.5
"""How often a running node looks for changes to its trust store (seconds)."""

JoinHook = Callable[[str], Awaitable[bool | None]]
"""Asked to join the on-demand ring of a model a peer dialled this node for:
True once this node has a ring of it, False when it cannot (the model is not
cached here), None when it is still joining (the dialler redials shortly)."""


class Network:
    """The endpoint, discovery and trust every ring of this node shares (see
    the module docstring); `open_network` runs it."""

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.node_id = settings.identity.node_id
        self.name = settings.name
        self.trust = settings.trust
        self.endpoint: Endpoint | None = None
        self.known: dict[str, PeerInfo] = {}  # what discovery reports
        self.join: JoinHook | None = None  # set by the node's ModelSet
        self._rings: dict[str, Peers] = {}  # model id -> that ring's peers
        self._link_gate = LinkGate()  # one link per connection

    # --- rings ----------------------------------------------------------------

    def add_ring(self, peers: Peers) -> None:
        """Serve `peers`' model: hand it its links, tell it what discovery knows."""
        if peers.model_id in self._rings:
            raise RuntimeError(f"{peers.model_id} already has a ring on this node")
        self._rings[peers.model_id] = peers
        for peer in self.known.values():
            peers.peer_event(PeerEventKind.APPEARED, peer)

    def remove_ring(self, peers: Peers, reason: str) -> None:
        """Stop serving `peers`' model: its links close (its peers see it leave)."""
        if self._rings.get(peers.model_id) is peers:
            del self._rings[peers.model_id]
        peers.close_all(reason)

    def serves(self, model_id: str) -> bool:
        return model_id in self._rings

    def peer_memory(self) -> dict[str, int]:
        """Each linked peer's usable memory as it said in its `Hello` (of any ring)."""
        memory: dict[str, int] = {}
        for peers in self._rings.values():
            for member in peers.members():
                memory.setdefault(member.node_id, member.capabilities.usable_memory)
        return memory

    # --- incoming links -------------------------------------------------------

    async def handle_stream(self, stream: QuicStream) -> None:
        """The endpoint's stream handler: a peer dialled us and opened its link
        stream; its `Hello` says which model's ring answers."""
        if not self._link_gate.admit(stream):
            return
        messages = MessageStream(stream)
        try:
            hello = await receive_hello(messages)
        except trio.TooSlowError:
            stream.connection.close(ErrorCode.PROTOCOL_ERROR, "no hello in time")
            return
        except (RemoteProtocolError, ConnectionClosed, StreamReset, trio.ClosedResourceError):
            return  # (a bad Hello closed the connection already)
        joined: bool | None = False
        if hello.model not in self._rings and hello.on_demand and self.join is not None:
            try:
                joined = await self.join(hello.model)  # (loads nothing yet: the plan will)
            except Exception:  # a peer's dial must never take the endpoint down
                log.exception("cannot join the ring of %s", hello.model)
        peers = self._rings.get(hello.model)
        if peers is not None:
            await peers.accept(messages, hello)
            return
        if joined is None:  # not declined: the dialler tries again within a second
            stream.connection.close(TransportErrorCode.NO_ERROR, f"still joining {hello.model}")
            return
        if not hello.on_demand:
            log.warning("%s serves %r, which this node does not: not linking", hello.name,
                        hello.model)  # fmt: skip
        stream.connection.close(ErrorCode.MODEL_NOT_SERVED, f"{hello.model} is not served here")

    # --- discovery and trust --------------------------------------------------

    def peer_event(self, kind: PeerEventKind, peer: PeerInfo) -> None:
        if kind in (PeerEventKind.APPEARED, PeerEventKind.UPDATED):
            self.known[peer.node_id] = peer
        elif kind is PeerEventKind.EXPIRED:
            self.known.pop(peer.node_id, None)
        for peers in list(self._rings.values()):
            peers.peer_event(kind, peer)

    def trust_changed(self) -> None:
        for node_id in [n for n in self.known if self.trust.get(n) is None]:
            del self.known[node_id]
        for peers in list(self._rings.values()):
            peers.trust_changed(self.trust)


@asynccontextmanager
async def open_network(
    settings: ClusterSettings, capabilities: DeviceCapabilities
) -> AsyncIterator[Network]:
    """Open the node's QUIC port and discovery (announcing `capabilities`) until
    the block exits; rings join with `Network.add_ring`."""
    from exoquic.discovery.service import open_discovery

    network = Network(settings)
    trust = settings.trust
    transport = TransportConfig(
        idle_timeout=settings.peer_timeout, keepalive_interval=settings.peer_timeout / 4
    )
    endpoint_cm = open_endpoint(
        settings.identity,
        verify_peer=_verifier(trust),
        stream_handler=network.handle_stream,
        host=settings.host,
        port=_node_port(settings.host, settings.port),
        config=transport,
    )
    async with endpoint_cm as endpoint, trio.open_nursery() as nursery:
        network.endpoint = endpoint
        port = endpoint.local_address[1]
        log.info("node %s (%s) listening on UDP port %d", network.node_id, settings.name, port)
        async with open_discovery(
            list(settings.discovery),
            identity=settings.identity,
            trust=trust,
            port=port,
            name=settings.name,
            capabilities=capabilities.to_dict(),
            peers_file=settings.peers_file,
            probe=_prober(endpoint),
        ) as discovery:
            for peer in discovery.peers().values():
                network.peer_event(PeerEventKind.APPEARED, peer)
            nursery.start_soon(_follow_discovery, network, discovery.events)
            nursery.start_soon(_watch_trust, trust, endpoint, network)
            yield network
            nursery.cancel_scope.cancel()


async def _follow_discovery(network: Network, events: trio.MemoryReceiveChannel[Any]) -> None:
    async for event in events:
        network.peer_event(event.kind, event.peer)


async def _watch_trust(trust: TrustStore, endpoint: Endpoint, network: Network) -> None:
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
            network.trust_changed()


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
