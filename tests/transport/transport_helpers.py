"""In-memory QUIC sessions with explicit time, for sans-IO transport tests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

from exoquic.identity.certs import make_certificate
from exoquic.transport.config import NODE_ALPN, TransportConfig, quic_configuration
from exoquic.transport.quic import ExoQuicConnection
from exoquic.transport.session import Authorizer, Session

CLIENT_ADDR = ("198.18.0.1", 4001)
SERVER_ADDR = ("198.18.0.2", 4002)


@dataclass
class Node:
    key: ed25519.Ed25519PrivateKey
    cert: x509.Certificate

    @classmethod
    def generate(cls) -> Node:
        key = ed25519.Ed25519PrivateKey.generate()
        return cls(key, make_certificate(key))


def make_client(
    node: Node | None,
    authorize: Authorizer,
    *,
    alpn: str = NODE_ALPN,
    config: TransportConfig | None = None,
    now: float = 0.0,
    tls_identity: tuple[object, object] | None = None,
) -> Session:
    """A client session that has sent its first flight.

    `node=None` presents no certificate; `tls_identity=(certificate,
    private_key)` presents that instead of the node's own.
    """
    config = config or TransportConfig()
    helper = node or Node.generate()
    configuration = quic_configuration(
        helper.key, helper.cert, config, is_client=True, alpn_protocols=[alpn]
    )
    if node is None:
        configuration.certificate = configuration.private_key = None
    if tls_identity is not None:
        configuration.certificate, configuration.private_key = tls_identity
    quic = ExoQuicConnection(configuration=configuration, receive_window=config.receive_window)
    quic.connect(SERVER_ADDR, now=now)
    return Session(quic, authorize)


def make_server(
    node: Node,
    client: Session,
    authorize: Authorizer,
    *,
    alpns: Iterable[str] = (NODE_ALPN,),
    config: TransportConfig | None = None,
) -> Session:
    config = config or TransportConfig()
    configuration = quic_configuration(
        node.key, node.cert, config, is_client=False, alpn_protocols=list(alpns)
    )
    quic = ExoQuicConnection(
        configuration=configuration,
        receive_window=config.receive_window,
        original_destination_connection_id=client.quic.original_destination_connection_id,
    )
    return Session(quic, authorize)


def transfer(sender: Session, receiver: Session, now: float) -> int:
    """Hand every datagram `sender` has ready to `receiver`; returns how many."""
    datagrams = sender.datagrams_to_send(now)
    source = CLIENT_ADDR if sender.is_client else SERVER_ADDR
    for data, _ in datagrams:
        receiver.receive_datagram(data, source, now)
    return len(datagrams)


def settle(client: Session, server: Session, now: float, *, max_time: float = 30.0) -> float:
    """Exchange datagrams and fire timers until neither side has anything to do."""
    while now < max_time:
        moved = transfer(client, server, now) + transfer(server, client, now)
        if moved:
            continue
        timers = [t for t in (client.get_timer(), server.get_timer()) if t is not None]
        # Idle timers are far away; stop once only they remain.
        if not timers or min(timers) > now + 1.0:
            return now
        now = max(now, min(timers))
        for session in (client, server):
            timer = session.get_timer()
            if timer is not None and timer <= now:
                session.handle_timer(now)
    return now


def drain_events(session: Session) -> list[object]:
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events
