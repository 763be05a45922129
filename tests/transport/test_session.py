"""Handshake and key pinning between two in-memory QUIC sessions, explicit time."""

from __future__ import annotations

from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from transport_helpers import Node, drain_events, make_client, make_server, settle, transfer

from exoquic.identity.certs import raw_public_key
from exoquic.transport.config import NODE_ALPN, PAIRING_ALPN
from exoquic.transport.errors import ErrorCode
from exoquic.transport.session import accept_pairing, pin_key, pin_trust_store


def key_of(node: Node) -> bytes:
    return raw_public_key(node.key.public_key())


def trusting(*nodes: Node):
    keys = {key_of(node) for node in nodes}
    return pin_trust_store(keys.__contains__, pairing=False)


def terminated(events: list[object]) -> ConnectionTerminated:
    found = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert found, events
    return found[0]


def test_trusted_pair_connects_and_pins_keys() -> None:
    alice, bob = Node.generate(), Node.generate()
    client = make_client(alice, pin_key(key_of(bob)))
    server = make_server(bob, client, trusting(alice))
    settle(client, server, 0.0)

    assert client.established and server.established
    assert client.peer_public_key == key_of(bob)
    assert server.peer_public_key == key_of(alice)
    assert client.alpn == server.alpn == NODE_ALPN
    assert any(isinstance(e, HandshakeCompleted) for e in drain_events(client))
    assert any(isinstance(e, HandshakeCompleted) for e in drain_events(server))


def test_stream_data_flows_once_authenticated() -> None:
    alice, bob = Node.generate(), Node.generate()
    client = make_client(alice, pin_key(key_of(bob)))
    server = make_server(bob, client, trusting(alice))
    now = settle(client, server, 0.0)
    client.quic.send_stream_data(0, b"hello", end_stream=True)
    settle(client, server, now)
    data = [e for e in drain_events(server) if isinstance(e, StreamDataReceived)]
    assert b"".join(e.data for e in data) == b"hello"


def test_server_refuses_untrusted_client_before_any_stream_data() -> None:
    alice, bob, mallory = Node.generate(), Node.generate(), Node.generate()
    client = make_client(mallory, pin_key(key_of(bob)))
    server = make_server(bob, client, trusting(alice))
    now = 0.0
    # Run the handshake by hand so the client's first stream data rides in
    # the same flight as its Finished.
    transfer(client, server, now)
    transfer(server, client, now)
    assert client.authenticated  # the client accepts bob...
    client.quic.send_stream_data(0, b"secret request", end_stream=True)
    transfer(client, server, now)  # ...but bob refuses mallory

    assert server.rejected == ErrorCode.PEER_NOT_TRUSTED
    assert not server.established
    server_events = drain_events(server)
    assert not any(isinstance(e, StreamDataReceived) for e in server_events)

    settle(client, server, now)
    closed = terminated(drain_events(client))
    assert closed.error_code == ErrorCode.PEER_NOT_TRUSTED
    assert not client.established
    assert client.closed is not None and client.closed.by_peer
    assert client.closed.authentication_failed


def test_client_refuses_server_with_unexpected_key() -> None:
    alice, bob, mallory = Node.generate(), Node.generate(), Node.generate()
    client = make_client(alice, pin_key(key_of(bob)))
    server = make_server(mallory, client, pin_trust_store(lambda key: True, pairing=False))
    settle(client, server, 0.0)

    assert client.rejected == ErrorCode.PEER_NOT_TRUSTED
    assert not client.established and not server.established
    # The client aborts before sending its own certificate and Finished, so
    # the impostor never completes the handshake nor learns who called.
    assert not server.authenticated and server.peer_public_key is None
    assert terminated(drain_events(server)).error_code != ErrorCode.NO_ERROR


def test_client_without_certificate_is_refused() -> None:
    bob = Node.generate()
    client = make_client(None, pin_key(key_of(bob)))
    server = make_server(bob, client, pin_trust_store(lambda key: True, pairing=False))
    settle(client, server, 0.0)

    assert server.rejected == ErrorCode.NO_CERTIFICATE
    assert terminated(drain_events(client)).error_code == ErrorCode.NO_CERTIFICATE


def test_non_ed25519_certificate_is_refused() -> None:
    bob = Node.generate()
    ec_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([])
    ec_cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ec_key.public_key())
        .serial_number(1)
        .not_valid_before(bob.cert.not_valid_before_utc)
        .not_valid_after(bob.cert.not_valid_after_utc)
        .sign(ec_key, hashes.SHA256())
    )
    client = make_client(Node.generate(), pin_key(key_of(bob)), tls_identity=(ec_cert, ec_key))
    server = make_server(bob, client, pin_trust_store(lambda key: True, pairing=False))
    settle(client, server, 0.0)

    assert server.rejected == ErrorCode.BAD_CERTIFICATE
    assert terminated(drain_events(client)).error_code == ErrorCode.BAD_CERTIFICATE


def test_pairing_alpn_accepts_unknown_key_and_exposes_it() -> None:
    alice, bob = Node.generate(), Node.generate()
    client = make_client(alice, accept_pairing(), alpn=PAIRING_ALPN)
    server = make_server(
        bob,
        client,
        pin_trust_store(lambda key: False, pairing=True),
        alpns=(NODE_ALPN, PAIRING_ALPN),
    )
    settle(client, server, 0.0)

    assert client.established and server.established
    assert client.alpn == server.alpn == PAIRING_ALPN
    assert server.peer_public_key == key_of(alice)
    assert client.peer_public_key == key_of(bob)


def test_pairing_alpn_refused_when_not_offered() -> None:
    alice, bob = Node.generate(), Node.generate()
    client = make_client(alice, accept_pairing(), alpn=PAIRING_ALPN)
    server = make_server(bob, client, pin_trust_store(lambda key: False, pairing=False))
    settle(client, server, 0.0)

    assert not client.authenticated and not server.authenticated
    assert terminated(drain_events(client)).error_code != ErrorCode.NO_ERROR


def test_node_alpn_never_accepts_an_unknown_key_even_with_pairing_on() -> None:
    alice, bob = Node.generate(), Node.generate()
    client = make_client(alice, pin_key(key_of(bob)))
    server = make_server(
        bob,
        client,
        pin_trust_store(lambda key: False, pairing=True),
        alpns=(NODE_ALPN, PAIRING_ALPN),
    )
    settle(client, server, 0.0)
    assert server.rejected == ErrorCode.PEER_NOT_TRUSTED
