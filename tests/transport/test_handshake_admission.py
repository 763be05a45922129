"""Admission of unauthenticated peers: the pure table, then real floods over loopback.

The floods come from another process (`initial_flood.py`) sending 1200-byte
junk Initials from 127.0.0.2 and up, while a trusted peer on 127.0.0.1
connects to the flooded endpoint over real UDP.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest
import trio

from exoquic.identity.keys import Identity
from exoquic.transport import ConnectionClosed, Endpoint, ErrorCode, TransportConfig, open_endpoint
from exoquic.transport.admission import Admission, Verdict, source_of

pytestmark = pytest.mark.timeout(60)

FLOOD = Path(__file__).with_name("initial_flood.py")
RATE = 1200  # junk Initials per second, as in the report that found the problem


# --- the table, no I/O --------------------------------------------------------


def test_admission_retries_past_the_threshold_and_only_validated_peers_get_in() -> None:
    table: Admission[str] = Admission(8, retry_above=0.5, max_per_source=8)
    assert table.decide("a", in_use=3, validated=False) is Verdict.ACCEPT
    assert table.decide("a", in_use=4, validated=False) is Verdict.RETRY
    assert table.decide("a", in_use=4, validated=True) is Verdict.ACCEPT
    assert table.stats.retries == 1 and table.stats.accepted == 2


def test_admission_caps_handshakes_per_source_until_they_finish() -> None:
    table: Admission[str] = Admission(100, retry_above=1.0, max_per_source=2)
    table.add("c1", "10.0.0.1")
    table.add("c2", "10.0.0.1")
    assert table.decide("10.0.0.1", in_use=2, validated=True) is Verdict.DROP
    assert table.decide("10.0.0.2", in_use=2, validated=False) is Verdict.ACCEPT
    table.authenticated("c1")  # a finished handshake frees its source's share
    assert table.pending_from("10.0.0.1") == 1
    assert table.decide("10.0.0.1", in_use=2, validated=False) is Verdict.ACCEPT


def test_full_admission_evicts_from_the_heaviest_source_never_an_authenticated_one() -> None:
    table: Admission[str] = Admission(4, retry_above=1.0, max_per_source=8)
    for name, source in (("old", "10.0.0.1"), ("lone", "10.0.0.2"), ("newer", "10.0.0.1")):
        table.add(name, source)
    table.add("trusted", "10.0.0.3")
    table.authenticated("trusted")
    assert table.decide("10.0.0.9", in_use=4, validated=False) is Verdict.EVICT
    assert table.eviction_candidate() == "old"
    # A source already holding as many as the heaviest may not evict others.
    assert table.decide("10.0.0.1", in_use=4, validated=False) is Verdict.DROP
    for name in ("old", "lone", "newer"):
        table.remove(name)
    assert table.decide("10.0.0.9", in_use=4, validated=False) is Verdict.DROP
    assert table.stats.evicted == 1 and table.stats.dropped == 2


def test_an_ipv6_slash_64_counts_as_one_source() -> None:
    assert source_of("2001:db8:1:2:aaaa::1") == source_of("2001:db8:1:2:bbbb::2")
    assert source_of("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("::ffff:198.18.0.7") == source_of("198.18.0.7") == "198.18.0.7"
    assert source_of("198.18.0.7") != source_of("198.18.0.8")


def test_admission_refuses_nonsense_limits() -> None:
    with pytest.raises(ValueError):
        Admission(0, retry_above=0.5, max_per_source=8)
    with pytest.raises(ValueError):
        Admission(8, retry_above=1.5, max_per_source=8)


# --- floods over real UDP ------------------------------------------------------


def loopback_aliases_work() -> bool:
    """Linux answers for all of 127.0.0.0/8; macOS only for 127.0.0.1 unless aliased."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.2", 0))
        except OSError:
            return False
    return True


needs_aliases = pytest.mark.skipif(
    not loopback_aliases_work(), reason="floods come from 127.0.0.2 and up"
)


@contextmanager
def flood(port: int, *, sources: int = 1, rate: int = RATE) -> Iterator[None]:
    command = [sys.executable, str(FLOOD), "--to", str(port), "--rate", str(rate)]
    process = subprocess.Popen([*command, "--sources", str(sources)], stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == b"ready\n"
        yield
    finally:
        process.kill()
        process.wait()


@asynccontextmanager
async def pair(
    config: TransportConfig | None = None, max_connections: int = 256
) -> AsyncIterator[tuple[Endpoint, Endpoint, Identity]]:
    """The flooded endpoint (trusting the peer) and the trusted peer's endpoint."""
    target, peer = Identity.generate(), Identity.generate()
    async with (
        open_endpoint(
            target,
            verify_peer={peer.public_key}.__contains__,
            host="127.0.0.1",
            config=config,
            max_connections=max_connections,
        ) as flooded,
        open_endpoint(peer, verify_peer={target.public_key}.__contains__, host="127.0.0.1") as ep,
    ):
        yield flooded, ep, target


async def wait_until(predicate: object, timeout: float = 10.0) -> None:
    assert callable(predicate)
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.05)


async def connect_quickly(peer: Endpoint, flooded: Endpoint, target: Identity) -> float:
    """Connect to `flooded`, close again, and return how long connecting took."""
    started = trio.current_time()
    with trio.fail_after(5):
        connection = await peer.connect(flooded.local_address, target.public_key)
    took = trio.current_time() - started
    await connection.aclose()
    return took


@needs_aliases
async def test_flood_from_one_address_leaves_room_for_a_trusted_peer() -> None:
    async with pair() as (flooded, peer, target):
        with flood(flooded.local_address[1]):
            await wait_until(lambda: flooded.statistics()["dropped"] > 100)
            for _ in range(3):
                assert await connect_quickly(peer, flooded, target) < 1.0
            stats = flooded.statistics()
        # One address holds at most its share of unfinished handshakes.
        assert stats["handshaking"] <= TransportConfig().max_handshakes_per_address
        assert stats["connections"] < 16


async def test_a_peer_asked_to_retry_proves_its_address_and_connects() -> None:
    config = TransportConfig(retry_above=0.0)  # every new peer gets a Retry
    async with pair(config) as (flooded, peer, target):
        connection = await peer.connect(flooded.local_address, target.public_key)
        stats = flooded.statistics()
        assert (stats["retries"], stats["accepted"], stats["dropped"]) == (1, 1, 0)
        assert connection.established and stats["handshaking"] == 0


@needs_aliases
async def test_flood_from_many_addresses_meets_a_retry_past_half_the_table() -> None:
    async with pair(max_connections=64) as (flooded, peer, target):
        with flood(flooded.local_address[1], sources=16):
            await wait_until(lambda: flooded.statistics()["retries"] > 100)
            for _ in range(3):
                assert await connect_quickly(peer, flooded, target) < 1.0
            # Junk never echoes a token, so it stays at the Retry threshold.
            assert flooded.statistics()["connections"] <= 32 + 1


@needs_aliases
async def test_full_table_evicts_a_handshake_instead_of_refusing_a_trusted_peer() -> None:
    config = TransportConfig(retry_above=1.0)  # no Retry: the table fills up
    async with pair(config, max_connections=16) as (flooded, peer, target):
        with flood(flooded.local_address[1], sources=4):
            await wait_until(lambda: flooded.statistics()["connections"] >= 16)
            assert await connect_quickly(peer, flooded, target) < 1.0
            assert flooded.statistics()["evicted"] >= 1


@needs_aliases
async def test_unfinished_handshakes_expire_after_the_handshake_timeout() -> None:
    config = TransportConfig(handshake_timeout=0.5)
    async with pair(config) as (flooded, _peer, _target):
        with flood(flooded.local_address[1], rate=50):
            await wait_until(lambda: flooded.statistics()["handshaking"] >= 4)
        await wait_until(lambda: flooded.statistics()["handshaking"] == 0, timeout=2.0)
        assert flooded.connections == []


async def test_one_connection_too_many_from_a_key_replaces_its_oldest() -> None:
    alice, bob, carol = Identity.generate(), Identity.generate(), Identity.generate()
    trusted = {bob.public_key, carol.public_key}
    config = TransportConfig(max_connections_per_key=3)
    async with (
        open_endpoint(alice, verify_peer=trusted.__contains__, host="127.0.0.1",
                      config=config) as a,
        open_endpoint(bob, verify_peer={alice.public_key}.__contains__, host="127.0.0.1") as b,
        open_endpoint(carol, verify_peer={alice.public_key}.__contains__, host="127.0.0.1") as c,
    ):  # fmt: skip
        bystander = await c.connect(a.local_address, alice.public_key)
        first = await b.connect(a.local_address, alice.public_key)
        kept = [await b.connect(a.local_address, alice.public_key) for _ in range(2)]
        await trio.sleep(0.2)
        assert first.closed is None  # three from bob: each may be a ring of its own
        newest = await b.connect(a.local_address, alice.public_key)
        with trio.fail_after(2):
            closed = await first.wait_closed()
        assert closed.by_peer and closed.error_code == ErrorCode.REPLACED
        assert all(c.closed is None for c in [*kept, newest, bystander])
        assert len(a.connections) == 4
        with pytest.raises(ConnectionClosed):
            await first.open_stream()
