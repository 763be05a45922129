"""open_discovery: methods combined into one merged stream of peer events."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import trio

from exoquic.discovery.multicast import MulticastDiscovery, MulticastSettings
from exoquic.discovery.peers import PeerEvent, PeerEventKind, PeerInfo, merge_peer_infos
from exoquic.discovery.service import PeerMerger, open_discovery, parse_methods
from exoquic.identity.keys import Identity
from exoquic.identity.trust import TrustStore

APPEARED, UPDATED, EXPIRED = PeerEventKind.APPEARED, PeerEventKind.UPDATED, PeerEventKind.EXPIRED
NODE = "exq-0000-0000-0000-0000-0"
KEY = bytes(32)


def info(source: str, addresses: tuple[str, ...], port: int = 7000, **extra: object) -> PeerInfo:
    return PeerInfo(NODE, addresses, port, source, **extra)  # type: ignore[arg-type]


def test_parse_methods() -> None:
    assert parse_methods("multicast, Manual,multicast") == ["multicast", "manual"]
    with pytest.raises(ValueError, match="unknown discovery method 'mdns'"):
        parse_methods("multicast,mdns")
    with pytest.raises(ValueError, match="no discovery method"):
        parse_methods(" , ")


def test_merge_prefers_the_signed_announcement() -> None:
    merged = merge_peer_infos(
        [
            info("manual", ("studio.local",), name="my studio"),
            info("multicast", ("198.18.0.2",), public_key=KEY, capabilities={"engine": "mlx"}),
            info("tailscale", ("100.64.0.2",), port=9999),
        ]
    )
    assert merged.source == "multicast+manual+tailscale"
    assert merged.addresses == ("198.18.0.2", "studio.local")  # tailscale's port differs
    assert (merged.port, merged.public_key, merged.name) == (7000, KEY, "my studio")
    assert dict(merged.capabilities) == {"engine": "mlx"}


def test_merger_appears_once_and_expires_with_the_last_source() -> None:
    merger = PeerMerger()
    manual = info("manual", ("198.18.0.2",))
    multicast = info("multicast", ("198.18.0.2", "198.18.0.9"), public_key=KEY)
    first = merger.handle(PeerEvent(APPEARED, manual))
    assert first is not None and first.kind is APPEARED
    second = merger.handle(PeerEvent(APPEARED, multicast))
    assert second is not None and second.kind is UPDATED
    assert second.peer.public_key == KEY and second.peer.source == "multicast+manual"
    third = merger.handle(PeerEvent(EXPIRED, multicast))
    assert third is not None and (third.kind, third.peer) == (UPDATED, manual)
    last = merger.handle(PeerEvent(EXPIRED, manual))
    assert last is not None and (last.kind, last.peer) == (EXPIRED, manual)
    assert merger.peers() == {}
    assert merger.handle(PeerEvent(EXPIRED, manual)) is None


def test_merger_passes_restarts_and_candidates_through() -> None:
    merger = PeerMerger()
    peer = info("multicast", ("198.18.0.2",))
    merger.handle(PeerEvent(APPEARED, peer))
    restart = merger.handle(PeerEvent(UPDATED, peer))
    assert restart is not None and restart.kind is UPDATED
    candidate = PeerEvent(PeerEventKind.CANDIDATE, peer)
    assert merger.handle(candidate) is candidate


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_multicast_and_manual_merge_into_one_peer(tmp_path: Path) -> None:
    me, other = Identity.generate(), Identity.generate()
    trust = TrustStore(tmp_path / "trust.json")
    trust.add(other.public_key, "other")
    peers_file = tmp_path / "peers.json"
    peers_file.write_text(
        json.dumps({"peers": [{"id": other.node_id, "host": "198.18.0.7", "port": 7001}]})
    )
    settings = MulticastSettings(
        port=free_udp_port(), interval=0.2, fast_interval=0.1, interfaces=("lo",)
    )
    async with open_discovery(
        ["multicast", "manual"],
        identity=me,
        trust=trust,
        port=7000,
        name="me",
        capabilities={},
        peers_file=peers_file,
        multicast_settings=settings,
    ) as discovery:
        assert discovery.multicast is not None
        with trio.fail_after(3):
            first = await discovery.events.receive()
            assert (first.kind, first.peer.source) == (APPEARED, "manual")
            other_node = MulticastDiscovery(
                other, trust, port=7001, name="other", capabilities={}, settings=settings
            )
            async with trio.open_nursery() as nursery:
                await nursery.start(other_node.run, trio.open_memory_channel[PeerEvent](10)[0])
                update = await discovery.events.receive()
                nursery.cancel_scope.cancel()
        assert update.kind is UPDATED
        assert update.peer.source == "multicast+manual"
        assert update.peer.public_key == other.public_key
        assert update.peer.addresses == ("127.0.0.1", "198.18.0.7")
        assert list(discovery.peers()) == [other.node_id]


async def test_tailscale_needs_a_probe(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a probe"):
        async with open_discovery(
            ["tailscale"],
            identity=Identity.generate(),
            trust=TrustStore(tmp_path / "trust.json"),
            port=7000,
            name="me",
            capabilities={},
        ):
            pass
