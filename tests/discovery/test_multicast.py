"""Multicast discovery over the loopback interface only (no root needed)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import trio

from exoquic.discovery.multicast import MulticastDiscovery, MulticastSettings, new_start_time
from exoquic.discovery.peers import PeerEvent, PeerEventKind
from exoquic.identity.keys import Identity
from exoquic.identity.trust import TrustStore


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def settings() -> MulticastSettings:
    # Loopback only: test traffic never leaves this host.
    return MulticastSettings(
        port=free_udp_port(), interval=0.2, fast_interval=0.1, interfaces=("lo",)
    )


def node(trust: TrustStore, identity: Identity, settings: MulticastSettings) -> MulticastDiscovery:
    return MulticastDiscovery(
        identity,
        trust,
        port=7000,
        name=identity.node_id[-6:],
        capabilities={"engine": "tinygrad"},
        settings=settings,
    )


async def next_event(receive: trio.MemoryReceiveChannel[PeerEvent], timeout: float) -> PeerEvent:
    with trio.fail_after(timeout):
        return await receive.receive()


async def test_two_nodes_on_one_host_find_each_other_and_expire(
    tmp_path: Path, settings: MulticastSettings
) -> None:
    a, b = Identity.generate(), Identity.generate()
    trust = TrustStore(tmp_path / "trust.json")
    trust.add(a.public_key, "a")
    trust.add(b.public_key, "b")
    send_a, receive_a = trio.open_memory_channel[PeerEvent](10)
    send_b, receive_b = trio.open_memory_channel[PeerEvent](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(node(trust, a, settings).run, send_a)
        async with trio.open_nursery() as b_nursery:
            b_nursery.start_soon(node(trust, b, settings).run, send_b)
            seen_by_a = await next_event(receive_a, timeout=2)
            seen_by_b = await next_event(receive_b, timeout=2)
            assert (seen_by_a.kind, seen_by_a.peer.node_id) == (PeerEventKind.APPEARED, b.node_id)
            assert (seen_by_b.kind, seen_by_b.peer.node_id) == (PeerEventKind.APPEARED, a.node_id)
            assert seen_by_a.peer.addresses == ("127.0.0.1",)
            assert seen_by_a.peer.port == 7000
            assert dict(seen_by_a.peer.capabilities) == {"engine": "tinygrad"}
            b_nursery.cancel_scope.cancel()
        # b stopped announcing: a expires it after 3 missed intervals (0.6 s).
        gone = await next_event(receive_a, timeout=2)
        assert (gone.kind, gone.peer.node_id) == (PeerEventKind.EXPIRED, b.node_id)
        nursery.cancel_scope.cancel()


async def test_untrusted_node_is_not_reported(tmp_path: Path, settings: MulticastSettings) -> None:
    a, stranger = Identity.generate(), Identity.generate()
    trust = TrustStore(tmp_path / "trust.json")
    send_a, receive_a = trio.open_memory_channel[PeerEvent](10)
    discovery = node(trust, a, settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(discovery.run, send_a)
        await nursery.start(node(trust, stranger, settings).run, trio.open_memory_channel(10)[0])
        await trio.sleep(0.5)
        assert discovery.table.peers() == {}
        assert discovery.table.statistics().untrusted >= 2
        discovery.pairing = True
        candidate = await next_event(receive_a, timeout=2)
        assert (candidate.kind, candidate.peer.node_id) == (
            PeerEventKind.CANDIDATE,
            stranger.node_id,
        )
        nursery.cancel_scope.cancel()


def test_each_instance_starts_later_than_the_one_before(tmp_path: Path) -> None:
    """Receivers order runs by `start`: even instances made within one clock
    tick (a restart inside one process) must not tie."""
    before = time.time_ns() // 1000
    starts = [new_start_time() for _ in range(1000)]
    assert starts == sorted(set(starts))
    assert before <= starts[0] <= time.time_ns() // 1000
    identity, trust = Identity.generate(), TrustStore(tmp_path / "trust.json")
    first = node(trust, identity, MulticastSettings())
    second = node(trust, identity, MulticastSettings())
    assert first.start_time < second.start_time
