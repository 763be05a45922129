"""The node's UDP endpoint: one socket that both accepts and opens QUIC connections.

Datagrams are demultiplexed by destination connection id. A client Initial
for an unknown id (at least 1200 bytes, as QUIC requires) may start a new
server side connection; anything else unknown is dropped. Until a peer has
authenticated it can only take a bounded share of the connection table:
`transport/admission.py` decides, with a stateless Retry once the table is
half full. Version negotiation is not implemented: every exoquic node speaks
QUIC v1/v2.

A node keeps at most `TransportConfig.max_connections_per_key` connections
*from* each trusted key (one per model's ring the peer shares with it): when
one more authenticates, the oldest from that key is closed (REPLACED).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict

import trio
from aioquic.buffer import Buffer
from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE
from aioquic.quic.packet import (
    QuicHeader,
    QuicPacketType,
    QuicProtocolVersion,
    encode_quic_retry,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler

from exoquic.errors import sole_error
from exoquic.identity.certs import make_certificate
from exoquic.identity.keys import Identity
from exoquic.transport.admission import Admission, Verdict, source_of
from exoquic.transport.config import NODE_ALPN, PAIRING_ALPN, TransportConfig, quic_configuration
from exoquic.transport.connection import Connection, StreamHandler
from exoquic.transport.errors import ConnectionClosed, ErrorCode
from exoquic.transport.quic import ExoQuicConnection
from exoquic.transport.session import (
    Authorizer,
    NetworkAddress,
    Session,
    accept_pairing,
    pin_key,
    pin_node_id,
    pin_trust_store,
)

logger = logging.getLogger(__name__)

_RECEIVE_BATCH = 64  # datagrams read per wakeup before yielding to other tasks
_SOCKET_BUFFER = 4 << 20
_CID_LENGTH = 8  # aioquic's default QuicConfiguration.connection_id_length
_SUPPORTED_VERSIONS = frozenset({QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2})
_SHUTDOWN_GRACE = 0.5  # seconds to let CONNECTION_CLOSE frames leave on exit


class Endpoint:
    """A UDP socket serving every QUIC connection of this node, in both directions.

    Create it with `open_endpoint`. Connections live in the endpoint's
    nursery and close when the endpoint does.
    """

    def __init__(
        self,
        identity: Identity,
        sock: socket.socket,
        nursery: trio.Nursery,
        *,
        verify_peer: Callable[[bytes], bool],
        stream_handler: StreamHandler | None,
        pairing_handler: StreamHandler | None,
        config: TransportConfig,
        max_connections: int,
    ) -> None:
        self.identity = identity
        self.config = config
        self._certificate = make_certificate(identity.private_key)
        self._sock = sock
        self._nursery = nursery
        self._verify_peer = verify_peer
        self._stream_handler = stream_handler
        self._pairing_handler = pairing_handler
        self._by_cid: dict[bytes, Connection] = {}
        self._connections: dict[Connection, None] = {}  # (a set, in the order they came)
        self._admission: Admission[Connection] = Admission(
            max_connections,
            retry_above=config.retry_above,
            max_per_source=config.max_handshakes_per_address,
        )
        self._retry = QuicRetryTokenHandler()
        self._send_lock = trio.Lock()
        self._closing = False

    @property
    def local_address(self) -> NetworkAddress:
        """The (host, port) the socket is bound to."""
        address: NetworkAddress = self._sock.getsockname()
        return address

    @property
    def connections(self) -> list[Connection]:
        """Open connections (both directions), authenticated or still handshaking."""
        return [c for c in self._connections if c.closed is None]

    def find_connection(self, peer_public_key: bytes) -> Connection | None:
        """An open, authenticated node connection with this peer, in either direction."""
        for connection in self.connections:
            if (
                connection.established
                and connection.alpn == NODE_ALPN
                and connection.peer_public_key == peer_public_key
            ):
                return connection
        return None

    def recheck_trust(self) -> int:
        """Close node connections whose peer `verify_peer` no longer accepts
        (after `exoquic trust remove`); returns how many were closed."""
        revoked = [
            connection
            for connection in self.connections
            if connection.established
            and connection.alpn == NODE_ALPN
            and not self._verify_peer(connection.peer_public_key)
        ]
        for connection in revoked:
            connection.close(ErrorCode.PEER_NOT_TRUSTED, "trust revoked")
        return len(revoked)

    def statistics(self) -> dict[str, int]:
        """Open connections, unfinished handshakes, and what admission did so far."""
        return {
            "connections": len(self.connections),
            "handshaking": self._admission.pending,
            **asdict(self._admission.stats),
        }

    def set_pairing_handler(self, handler: StreamHandler | None) -> None:
        """Accept pairing connections (any key) and serve their streams with
        `handler`; None stops offering the pairing ALPN to new connections."""
        self._pairing_handler = handler

    async def connect(self, address: tuple[str, int], peer_public_key: bytes) -> Connection:
        """Connect to the node at `address` that must hold `peer_public_key`.

        Returns once both sides accepted each other; raises `ConnectionClosed`
        (`authentication_failed` set when either side refused) otherwise.
        """
        return await self._connect(address, NODE_ALPN, pin_key(peer_public_key))

    async def connect_node_id(self, address: tuple[str, int], node_id: str) -> Connection:
        """Connect to the node at `address` whose key must hash to `node_id` (a
        peer trusted by id whose key we have not seen yet); read the key it
        proved from `connection.peer_public_key`."""
        return await self._connect(address, NODE_ALPN, pin_node_id(node_id))

    async def probe(self, address: tuple[str, int]) -> bytes | None:
        """The ed25519 key of the exoquic node answering at `address`, or None.

        The handshake is abandoned as soon as the peer has proved its key, so
        a probe never opens a connection (Tailscale discovery uses it to learn
        who listens where; the trust store decides what happens next)."""
        seen: list[bytes] = []

        def record(alpn: str, key: bytes) -> bool:
            seen.append(key)
            return False

        with contextlib.suppress(ConnectionClosed):  # `record` always refuses
            await self._connect(address, NODE_ALPN, record)
        return seen[0] if seen else None

    async def connect_pairing(self, address: tuple[str, int]) -> Connection:
        """Connect over the pairing ALPN, accepting whatever ed25519 key the peer
        holds (read it from `connection.peer_public_key` and prove it with the PAKE)."""
        return await self._connect(address, PAIRING_ALPN, accept_pairing())

    # --- connections --------------------------------------------------------

    async def _connect(
        self, address: tuple[str, int], alpn: str, authorize: Authorizer
    ) -> Connection:
        remote = await self._resolve(address)
        quic = self._new_quic(remote, is_client=True, alpn_protocols=[alpn])
        quic.connect(remote, now=trio.current_time())
        connection = self._start(Session(quic, authorize), remote)
        try:
            await connection.wait_established()
        except BaseException:
            connection.close(ErrorCode.NO_ERROR, "connect abandoned")
            raise
        return connection

    async def _resolve(self, address: tuple[str, int]) -> NetworkAddress:
        host, port = address
        # A dual-stack IPv6 socket reaches IPv4 peers at v4-mapped addresses.
        flags = socket.AI_V4MAPPED if self._sock.family == socket.AF_INET6 else 0
        infos = await trio.socket.getaddrinfo(
            host, port, family=self._sock.family, type=socket.SOCK_DGRAM, flags=flags
        )
        if not infos:
            raise OSError(f"cannot resolve {host!r}")
        resolved = infos[0][4]
        assert isinstance(resolved[0], str)
        return resolved

    def _accept(self, header: QuicHeader, remote: NetworkAddress) -> Connection | None:
        """A new server side connection for a client Initial, if admission allows."""
        if self._closing:
            return None
        original_cid, retry_cid = header.destination_cid, None
        if header.token:
            try:  # only our own Retry hands out tokens (there are no NEW_TOKENs)
                original_cid = self._retry.validate_token(
                    address=remote,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=trio.current_time(),
                )
            except ValueError:
                self._admission.stats.dropped += 1
                return None
            retry_cid = header.destination_cid
        source = source_of(remote[0])
        verdict = self._admission.decide(
            source, in_use=len(self._connections), validated=retry_cid is not None
        )
        if verdict is Verdict.RETRY:
            self._send_retry(header, remote)
            return None
        if verdict is Verdict.DROP:
            return None
        if verdict is Verdict.EVICT:
            self._drop(self._admission.eviction_candidate(), "evicted: connection table full")
        connection = self._start_server(remote, source, original_cid, retry_cid)
        self._by_cid[header.destination_cid] = connection
        return connection

    def _start_server(
        self, remote: NetworkAddress, source: str, original_cid: bytes, retry_cid: bytes | None
    ) -> Connection:
        pairing = self._pairing_handler is not None
        alpns = [NODE_ALPN, PAIRING_ALPN] if pairing else [NODE_ALPN]
        quic = self._new_quic(
            remote,
            is_client=False,
            alpn_protocols=alpns,
            original_destination_connection_id=original_cid,
            retry_source_connection_id=retry_cid,
        )
        session = Session(quic, pin_trust_store(self._verify_peer, pairing=pairing))
        return self._start(session, remote, source=source)

    def _send_retry(self, header: QuicHeader, remote: NetworkAddress) -> None:
        """Ask the client to prove its address: it must echo this token from it.
        Stateless (the token is sealed with a key only we hold), and smaller
        than the Initial it answers, so it amplifies nothing."""
        assert header.version is not None  # checked by _dispatch
        retry_cid = os.urandom(_CID_LENGTH)
        token = self._retry.create_token(
            address=remote,
            original_destination_connection_id=header.destination_cid,
            retry_source_connection_id=retry_cid,
            now=trio.current_time(),
        )
        packet = encode_quic_retry(
            version=header.version,
            source_cid=retry_cid,
            destination_cid=header.source_cid,
            original_destination_cid=header.destination_cid,
            retry_token=token,
        )
        self.send_datagram_nowait(packet, remote)

    def _drop(self, connection: Connection, reason: str) -> None:
        """Abandon an unfinished handshake now and free its slot at once."""
        logger.debug("dropping handshake from %s: %s", connection.remote_address, reason)
        connection.abandon(reason)
        self.forget(connection)

    def _new_quic(
        self,
        remote: NetworkAddress,
        *,
        is_client: bool,
        alpn_protocols: list[str],
        original_destination_connection_id: bytes | None = None,
        retry_source_connection_id: bytes | None = None,
    ) -> ExoQuicConnection:
        configuration = quic_configuration(
            self.identity.private_key,
            self._certificate,
            self.config,
            is_client=is_client,
            alpn_protocols=alpn_protocols,
            max_datagram_size=self.config.datagram_size_for(remote),
        )
        return ExoQuicConnection(
            configuration=configuration,
            receive_window=self.config.receive_window,
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id,
        )

    def _start(
        self, session: Session, remote: NetworkAddress, *, source: str | None = None
    ) -> Connection:
        connection = Connection(self, session, remote, self.config)
        self._connections[connection] = None
        if source is not None:  # our own dials are not limited here
            self._admission.add(connection, source)
        self._by_cid[session.quic.host_cid] = connection
        self._nursery.start_soon(connection.run)
        return connection

    # --- the _Host interface used by connections ----------------------------

    async def send_datagram(self, data: bytes, address: NetworkAddress) -> None:
        while not self.send_datagram_nowait(data, address):
            # Only one task may wait for the socket to become writable.
            async with self._send_lock:
                await trio.lowlevel.wait_writable(self._sock)

    def send_datagram_nowait(self, data: bytes, address: NetworkAddress) -> bool:
        """Send now; False (nothing sent) when the socket buffer is full."""
        try:
            self._sock.sendto(data, address)
        except BlockingIOError:
            return False
        except OSError as exc:  # unreachable peer and the like: UDP drops it
            logger.debug("sendto %s failed: %s", address, exc)
        return True

    def register_cid(self, cid: bytes, connection: Connection) -> None:
        self._by_cid[cid] = connection

    def unregister_cid(self, cid: bytes) -> None:
        self._by_cid.pop(cid, None)

    def forget(self, connection: Connection) -> None:
        self._connections.pop(connection, None)
        self._admission.remove(connection)
        for cid in [cid for cid, c in self._by_cid.items() if c is connection]:
            del self._by_cid[cid]

    def authenticated(self, connection: Connection) -> None:
        self._admission.authenticated(connection)
        if connection.is_client or connection.alpn != NODE_ALPN:
            return
        key = connection.peer_public_key
        older = [
            other
            for other in self.connections  # (oldest first)
            if other is not connection
            and not other.is_client
            and other.established
            and other.alpn == NODE_ALPN
            and other.peer_public_key == key
        ]
        # A bounded number from each key: a peer cannot multiply its share of
        # the table (a restarted peer's old links go when its rings see the new
        # instance, or at their idle timeout).
        excess = len(older) + 1 - self.config.max_connections_per_key
        for other in older[: max(0, excess)]:
            other.close(ErrorCode.REPLACED, "replaced by a newer connection")

    def stream_handler_for(self, alpn: str) -> StreamHandler | None:
        return self._pairing_handler if alpn == PAIRING_ALPN else self._stream_handler

    # --- the socket ---------------------------------------------------------

    async def receive_loop(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self._sock)
            for _ in range(_RECEIVE_BATCH):
                try:
                    data, address = self._sock.recvfrom(65536)
                except BlockingIOError:
                    break
                except OSError as exc:  # e.g. ICMP errors reported on the socket
                    logger.debug("recvfrom failed: %s", exc)
                    continue
                self._dispatch(data, address)

    def _dispatch(self, data: bytes, address: NetworkAddress) -> None:
        if data and not data[0] & 0x80:
            # Short header (all traffic after the handshake): the destination
            # connection id follows the first byte; no need to parse more.
            short = self._by_cid.get(data[1 : 1 + _CID_LENGTH])
            if short is not None:
                short.datagram_received(data, address)
            return
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=_CID_LENGTH)
        except ValueError:
            return
        connection = self._by_cid.get(header.destination_cid)
        if (
            connection is None
            and header.packet_type == QuicPacketType.INITIAL
            and header.version in _SUPPORTED_VERSIONS
            and len(data) >= SMALLEST_MAX_DATAGRAM_SIZE
        ):
            connection = self._accept(header, address)
        if connection is not None:
            connection.datagram_received(data, address)

    async def shutdown(self) -> None:
        """Close every connection and give the CONNECTION_CLOSE frames a moment to leave."""
        self._closing = True
        connections = list(self._connections)
        for connection in connections:
            connection.close(ErrorCode.NO_ERROR, "endpoint closing")
        with trio.move_on_after(_SHUTDOWN_GRACE):
            for connection in connections:
                await connection.wait_close_sent()


@asynccontextmanager
async def open_endpoint(
    identity: Identity,
    *,
    verify_peer: Callable[[bytes], bool],
    stream_handler: StreamHandler | None = None,
    pairing_handler: StreamHandler | None = None,
    host: str = "0.0.0.0",
    port: int = 0,
    config: TransportConfig | None = None,
    max_connections: int = 256,
) -> AsyncIterator[Endpoint]:
    """Bind a UDP socket and serve authenticated QUIC on it until the block exits.

    - `verify_peer(raw_key) -> bool` decides which keys may connect over the
      node ALPN (typically `TrustStore.is_trusted`).
    - `stream_handler(stream)` serves each stream a peer opens on a node
      connection, in its own task (`stream.connection.peer_public_key` says who).
    - `pairing_handler`, when given, makes the endpoint accept the pairing ALPN
      from any key and serves those streams; see `Endpoint.set_pairing_handler`.
    - `host` "0.0.0.0" serves IPv4; an IPv6 host ("::") serves both families.
    - `max_connections` sizes the connection table; peers that have not
      authenticated get a bounded share of it (see `transport/admission.py`
      and the `TransportConfig` fields `retry_above`, `handshake_timeout`,
      `max_handshakes_per_address`).

    On exit every connection is closed with NO_ERROR, so peers notice at once.
    """
    config = config or TransportConfig()
    with _bind(host, port) as sock:
        try:
            async with trio.open_nursery() as nursery:
                endpoint = Endpoint(
                    identity,
                    sock,
                    nursery,
                    verify_peer=verify_peer,
                    stream_handler=stream_handler,
                    pairing_handler=pairing_handler,
                    config=config,
                    max_connections=max_connections,
                )
                nursery.start_soon(endpoint.receive_loop)
                try:
                    yield endpoint
                finally:
                    with trio.CancelScope(shield=True):
                        await endpoint.shutdown()
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # Background tasks never raise, so a group only wraps what the
            # `async with` body raised: hand that back unwrapped.
            raise sole_error(group) from None


@contextmanager
def _bind(host: str, port: int) -> Iterator[socket.socket]:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 peers too
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
        sock.bind((host, port))
        yield sock
