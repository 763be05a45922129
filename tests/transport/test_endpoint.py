"""Two endpoints in one process over real loopback UDP: the trio driver end to end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from exoquic.identity.keys import Identity
from exoquic.transport import (
    PAIRING_ALPN,
    ConnectionClosed,
    Endpoint,
    ErrorCode,
    MessageStream,
    QuicStream,
    StreamHandler,
    StreamReset,
    TransportConfig,
    open_endpoint,
)
from exoquic.wire.errors import ErrorCode as WireErrorCode
from exoquic.wire.messages import Ping, Pong

pytestmark = pytest.mark.timeout(60)


async def echo(stream: QuicStream) -> None:
    while data := await stream.receive_some():
        await stream.send_all(data)


async def pong(stream: QuicStream) -> None:
    messages = MessageStream(stream)
    while (message := await messages.receive_message()) is not None:
        assert isinstance(message, Ping)
        await messages.send_message(Pong(nonce=message.nonce))


@asynccontextmanager
async def endpoint(
    identity: Identity,
    trusted: list[Identity],
    handler: StreamHandler | None = echo,
    config: TransportConfig | None = None,
) -> AsyncIterator[Endpoint]:
    keys = {peer.public_key for peer in trusted}
    async with open_endpoint(
        identity,
        verify_peer=keys.__contains__,
        stream_handler=handler,
        host="127.0.0.1",
        config=config,
    ) as opened:
        yield opened


async def receive_exactly(stream: QuicStream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some()
        assert chunk, "stream ended early"
        data += chunk
    return bytes(data)


async def test_trusted_peers_talk_both_ways_on_one_connection() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with endpoint(alice, [bob]) as a, endpoint(bob, [alice]) as b:
        connection = await b.connect(a.local_address, alice.public_key)
        assert connection.peer_public_key == alice.public_key
        assert connection.is_client
        async with await connection.open_stream() as stream:
            await stream.send_all(b"hello")
            assert await receive_exactly(stream, 5) == b"hello"
        # alice opens a stream back over the connection bob opened
        (incoming,) = a.connections
        assert incoming.peer_public_key == bob.public_key and not incoming.is_client
        async with await incoming.open_stream() as stream:
            await stream.send_all(b"back")
            await stream.send_eof()
            assert await receive_exactly(stream, 4) == b"back"
            assert await stream.receive_some() == b""


async def test_messages_round_trip() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with endpoint(alice, [bob], pong) as a, endpoint(bob, [alice]) as b:
        connection = await b.connect(a.local_address, alice.public_key)
        async with await MessageStream.open(connection) as messages:
            for nonce in range(3):
                await messages.send_message(Ping(nonce=nonce))
                assert await messages.receive_message() == Pong(nonce=nonce)


async def test_untrusted_client_is_refused() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with endpoint(alice, []) as a, endpoint(bob, [alice]) as b:
        with pytest.raises(ConnectionClosed) as caught:
            await b.connect(a.local_address, alice.public_key)
        assert caught.value.by_peer and caught.value.error_code == ErrorCode.PEER_NOT_TRUSTED
        assert a.connections == [] or all(c.closed for c in a.connections)


async def test_client_refuses_a_server_with_another_key() -> None:
    alice, bob, mallory = Identity.generate(), Identity.generate(), Identity.generate()
    served: list[QuicStream] = []

    async def record(stream: QuicStream) -> None:
        served.append(stream)

    async with endpoint(mallory, [bob], record) as m, endpoint(bob, [alice]) as b:
        with pytest.raises(ConnectionClosed) as caught:
            await b.connect(m.local_address, alice.public_key)
        assert not caught.value.by_peer
        assert caught.value.error_code == ErrorCode.PEER_NOT_TRUSTED
        assert caught.value.authentication_failed
    assert served == []


async def test_pairing_needs_a_pairing_handler_and_exposes_the_key() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with endpoint(alice, []) as a, endpoint(bob, []) as b:
        with pytest.raises(ConnectionClosed):
            await b.connect_pairing(a.local_address)
        seen: list[bytes] = []

        async def pairing(stream: QuicStream) -> None:
            seen.append(stream.connection.peer_public_key)
            await echo(stream)

        a.set_pairing_handler(pairing)
        connection = await b.connect_pairing(a.local_address)
        assert connection.alpn == PAIRING_ALPN
        assert connection.peer_public_key == alice.public_key
        async with await connection.open_stream() as stream:
            await stream.send_all(b"code")
            assert await receive_exactly(stream, 4) == b"code"
        assert seen == [bob.public_key]
        # node streams are still refused to an untrusted key
        with pytest.raises(ConnectionClosed):
            await b.connect(a.local_address, alice.public_key)


async def test_send_backpressure_and_bounded_receive_buffer() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    window, high_water = 64 * 1024, 64 * 1024
    config = TransportConfig(receive_window=window, send_high_water=high_water)
    accepted: trio.MemorySendChannel[QuicStream]
    accepted, streams = trio.open_memory_channel[QuicStream](1)

    async def park(stream: QuicStream) -> None:
        await accepted.send(stream)
        await trio.sleep_forever()

    payload = bytes(range(256)) * 8192  # 2 MiB
    async with endpoint(alice, [bob], park, config) as a, endpoint(bob, [alice], None, config) as b:
        connection = await b.connect(a.local_address, alice.public_key)
        stream = await connection.open_stream()
        sent = 0
        with trio.move_on_after(1.0):  # the reader never reads: sending must stall
            for start in range(0, len(payload), 4096):
                await stream.send_all(payload[start : start + 4096])
                sent += 4096
        assert 0 < sent <= window + high_water + 64 * 1024
        assert stream.statistics().send_buffered <= high_water + 64 * 1024
        peer = await streams.receive()
        assert peer.statistics().receive_buffered <= window
        async with trio.open_nursery() as nursery:

            async def send_rest() -> None:
                await stream.send_all(payload[sent:])
                await stream.send_eof()

            nursery.start_soon(send_rest)
            received = bytearray()
            while data := await peer.receive_some(10_000):
                assert peer.statistics().receive_buffered <= window
                received += data
        assert received == payload


async def test_oversized_frame_closes_only_that_connection() -> None:
    alice, bob, carol = Identity.generate(), Identity.generate(), Identity.generate()
    async with (
        endpoint(alice, [bob, carol], pong) as a,
        endpoint(bob, [alice]) as b,
        endpoint(carol, [alice]) as c,
    ):
        good = await c.connect(a.local_address, alice.public_key)
        bad = await b.connect(a.local_address, alice.public_key)
        stream = await bad.open_stream()
        await stream.send_all(b"\xff\xff\xff\xff")  # a 4 GiB frame announced
        with pytest.raises(ConnectionClosed) as caught:
            await stream.receive_some()
        assert caught.value.by_peer
        assert caught.value.error_code == WireErrorCode.FRAME_TOO_LARGE
        # garbage CBOR in a well-sized frame is refused the same way
        other = await b.connect(a.local_address, alice.public_key)
        stream = await other.open_stream()
        await stream.send_all(b"\x00\x00\x00\x02\xff\xff")
        with pytest.raises(ConnectionClosed) as caught:
            await stream.receive_some()
        assert caught.value.error_code == WireErrorCode.MALFORMED_MESSAGE
        async with await MessageStream.open(good) as messages:
            await messages.send_message(Ping(nonce=1))
            assert await messages.receive_message() == Pong(nonce=1)


async def test_peer_reset_and_stop_sending_surface_as_stream_reset() -> None:
    alice, bob = Identity.generate(), Identity.generate()

    async def abort(stream: QuicStream) -> None:
        await stream.receive_some()
        stream.reset(0x42)

    async with endpoint(alice, [bob], abort) as a, endpoint(bob, [alice]) as b:
        connection = await b.connect(a.local_address, alice.public_key)
        stream = await connection.open_stream()
        await stream.send_all(b"x")
        with pytest.raises(StreamReset) as caught:
            await stream.receive_some()
        assert caught.value.error_code == 0x42
        with pytest.raises(StreamReset):
            for _ in range(100):
                await stream.send_all(b"y" * 1000)
                await trio.sleep(0.01)


async def test_closing_endpoint_tells_peers_at_once() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with endpoint(bob, [alice]) as b:
        async with endpoint(alice, [bob]) as a:
            connection = await b.connect(a.local_address, alice.public_key)
            stream = await connection.open_stream()
        with trio.fail_after(1.0):  # far below the idle timeout
            with pytest.raises(ConnectionClosed) as caught:
                await stream.receive_some()
        assert caught.value.by_peer and caught.value.error_code == ErrorCode.NO_ERROR
        await connection.wait_closed()
        assert b.connections == []


async def test_body_exceptions_come_out_unwrapped() -> None:
    alice = Identity.generate()
    with pytest.raises(KeyError):
        async with endpoint(alice, []):
            raise KeyError("mine")


async def test_connecting_to_nobody_fails_after_the_idle_timeout() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    config = TransportConfig(idle_timeout=1.0, keepalive_interval=0.25)
    with trio.socket.socket(type=trio.socket.SOCK_DGRAM) as silent:  # bound, never answers
        await silent.bind(("127.0.0.1", 0))
        async with endpoint(bob, [alice], config=config) as b:
            start = trio.current_time()
            with pytest.raises(ConnectionClosed) as caught:
                await b.connect(silent.getsockname(), alice.public_key)
            assert caught.value.idle_timeout
            assert trio.current_time() - start < 3.0


async def test_find_connection_reuses_either_direction() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    async with endpoint(alice, [bob]) as a, endpoint(bob, [alice]) as b:
        assert b.find_connection(alice.public_key) is None
        connection = await b.connect(a.local_address, alice.public_key)
        assert b.find_connection(alice.public_key) is connection
        assert connection.peer_node_id == alice.node_id
        incoming = a.find_connection(bob.public_key)
        assert incoming is not None and not incoming.is_client
        await connection.aclose()
        assert b.find_connection(alice.public_key) is None


def _ipv6_loopback_available() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="no IPv6 loopback here")
async def test_dual_stack_endpoint_serves_ipv4_and_ipv6_peers() -> None:
    alice, bob, carol = Identity.generate(), Identity.generate(), Identity.generate()
    keys = {bob.public_key, carol.public_key}
    async with (
        open_endpoint(alice, verify_peer=keys.__contains__, stream_handler=echo, host="::") as a,
        endpoint(bob, [alice]) as b,  # IPv4 only
        open_endpoint(carol, verify_peer=lambda key: False, host="::1") as c,
    ):
        port = a.local_address[1]
        for peer, host in ((b, "127.0.0.1"), (c, "::1")):
            connection = await peer.connect((host, port), alice.public_key)
            async with await connection.open_stream() as stream:
                await stream.send_all(b"hi")
                assert await receive_exactly(stream, 2) == b"hi"


async def test_revoking_trust_drops_the_peer() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    trusted = {bob.public_key}
    async with (
        open_endpoint(alice, verify_peer=trusted.__contains__, host="127.0.0.1") as a,
        endpoint(bob, [alice]) as b,
    ):
        connection = await b.connect(a.local_address, alice.public_key)
        assert a.recheck_trust() == 0
        trusted.clear()  # `exoquic trust remove`
        assert a.recheck_trust() == 1
        closed = await connection.wait_closed()
        assert closed.by_peer and closed.error_code == ErrorCode.PEER_NOT_TRUSTED
        with pytest.raises(ConnectionClosed):
            await b.connect(a.local_address, alice.public_key)
