"""Peer pinning around a QUIC connection (sans-IO: bytes and time in, bytes out).

TLS verification of the certificate chain is replaced by pinning: both sides
present self-signed certificates, TLS itself proves each side holds the
private key of the certificate it sent (CertificateVerify), and when the
handshake completes the session extracts the peer's raw ed25519 key and asks
its `Authorizer` whether that key may talk to us over the negotiated ALPN.
When the answer is no, the connection is closed with an error code *before*
any stream event is handed out; stream events never surface before the peer
is authenticated.

aioquic has no hook to verify a certificate during the handshake, so the
check runs right after it, on the first `HandshakeCompleted` event. The
`Session` runs it inside `receive_datagram`, before anything else can be
sent, so a rejected server never receives our certificate and Finished, and
a rejected client never receives HANDSHAKE_DONE.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from aioquic.quic.events import (
    DatagramFrameReceived,
    HandshakeCompleted,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

from exoquic.identity.certs import CertificateError, peer_public_key
from exoquic.identity.node_id import node_id_from_public_key
from exoquic.transport.config import NODE_ALPN, PAIRING_ALPN
from exoquic.transport.errors import ConnectionClosed, ErrorCode
from exoquic.transport.quic import ExoQuicConnection

logger = logging.getLogger(__name__)

Authorizer = Callable[[str, bytes], bool]
"""Decides whether a peer holding this raw ed25519 key may use this ALPN."""

NetworkAddress = tuple[str, int] | tuple[str, int, int, int]

_TIMER_SLACK = 1e-6

# Events that carry peer application data; withheld until authentication.
_PEER_DATA_EVENTS = (StreamDataReceived, StreamReset, StopSendingReceived, DatagramFrameReceived)


def pin_key(expected: bytes) -> Authorizer:
    """Client side of the node protocol: only the exact key of the node we dialled."""
    return lambda alpn, key: alpn == NODE_ALPN and key == expected


def pin_node_id(node_id: str) -> Authorizer:
    """Client side of the node protocol when only the peer's node id is known
    (a peer trusted by id): any key that hashes to that id. The caller pins it."""
    return lambda alpn, key: alpn == NODE_ALPN and node_id_from_public_key(key) == node_id


def pin_trust_store(verify_peer: Callable[[bytes], bool], *, pairing: bool) -> Authorizer:
    """Server side: node connections need a trusted key; pairing ones (when
    offered) accept any ed25519 key, which the pairing service then proves."""

    def authorize(alpn: str, key: bytes) -> bool:
        if alpn == NODE_ALPN:
            return verify_peer(key)
        return pairing and alpn == PAIRING_ALPN

    return authorize


def accept_pairing() -> Authorizer:
    """Client side of pairing: any ed25519 key; the caller verifies it with the PAKE."""
    return lambda alpn, key: alpn == PAIRING_ALPN


class Session:
    """A QUIC connection whose events only flow once the peer's key is accepted."""

    def __init__(self, quic: ExoQuicConnection, authorize: Authorizer) -> None:
        self.quic = quic
        self._authorize = authorize
        self._events: deque[QuicEvent] = deque()
        self.peer_public_key: bytes | None = None
        self.alpn: str | None = None
        self.authenticated = False
        self.rejected: ErrorCode | None = None

    @property
    def is_client(self) -> bool:
        return self.quic.configuration.is_client

    @property
    def established(self) -> bool:
        """Both sides accepted each other: for a client, the server confirmed."""
        if not self.authenticated or self.closed is not None:
            return False
        return not self.is_client or self.quic.handshake_confirmed

    @property
    def closed(self) -> ConnectionClosed | None:
        """Why the connection is closing or closed; None while it is open."""
        event = self.quic.closing_event
        if event is None:
            return None
        return ConnectionClosed(
            event.error_code,
            event.reason_phrase,
            by_peer=self.quic.closed_by_peer,
            idle_timeout=self.quic.idle_timed_out,
        )

    # --- inputs -------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        self.quic.receive_datagram(data, addr, now)
        self._pump()

    def handle_timer(self, now: float) -> None:
        # aioquic arms its loss timer at `sent_time + delay` and then declares
        # loss when `sent_time <= now - delay`; at exactly that instant float
        # rounding can make it false and the timer stays at `now` forever (a
        # busy loop under trio's MockClock). Firing a microsecond late is safe.
        self.quic.handle_timer(now + _TIMER_SLACK)
        self._pump()

    def close(self, error_code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        self.quic.close(error_code=error_code, reason_phrase=reason)

    # --- outputs ------------------------------------------------------------

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        if self.quic.get_peer_address() is None:
            return []  # a server that has not received anything yet
        return self.quic.datagrams_to_send(now)

    def get_timer(self) -> float | None:
        return self.quic.get_timer()

    def next_event(self) -> QuicEvent | None:
        """The next event, never carrying peer data before authentication."""
        return self._events.popleft() if self._events else None

    # --- authentication -----------------------------------------------------

    def _pump(self) -> None:
        while (event := self.quic.next_event()) is not None:
            if isinstance(event, HandshakeCompleted):
                self._authenticate(event)
                if not self.authenticated:
                    continue
            elif isinstance(event, _PEER_DATA_EVENTS) and not self.authenticated:
                continue  # never hand out data from an unauthenticated peer
            self._events.append(event)

    def _authenticate(self, event: HandshakeCompleted) -> None:
        code, reason = self._check_peer(event)
        if code is not None:
            logger.info("refusing peer: %s (%s)", reason, code.name)
            self.rejected = code
            self.close(code, reason)
            # Stream frames may sit behind HandshakeCompleted in this batch.
            while self.quic.next_event() is not None:
                pass
            return
        self.authenticated = True

    def _check_peer(self, event: HandshakeCompleted) -> tuple[ErrorCode | None, str]:
        if event.session_resumed or event.early_data_accepted:
            return ErrorCode.BAD_HANDSHAKE, "session resumption is not allowed"
        if event.alpn_protocol is None:
            return ErrorCode.BAD_HANDSHAKE, "no ALPN negotiated"
        certificate = self.quic.peer_certificate
        try:
            key = peer_public_key(certificate)
        except CertificateError as exc:
            code = ErrorCode.NO_CERTIFICATE if certificate is None else ErrorCode.BAD_CERTIFICATE
            return code, str(exc)
        self.alpn = event.alpn_protocol
        self.peer_public_key = key
        try:
            trusted = self._authorize(event.alpn_protocol, key)
        except Exception:  # a broken trust callback must fail closed, not crash the endpoint
            logger.exception("peer authorization callback failed")
            trusted = False
        if not trusted:
            return ErrorCode.PEER_NOT_TRUSTED, f"key {key.hex()} not accepted"
        return None, ""


__all__ = [
    "Authorizer",
    "Session",
    "accept_pairing",
    "pin_key",
    "pin_node_id",
    "pin_trust_store",
]
