"""Manual discovery: validation messages, reload on change, invalid files, trust."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import trio
from discovery_netns import NodeProcess

from exoquic.discovery.manual import (
    ManualPeer,
    ManualPeerFile,
    ManualPeersError,
    parse_manual_peers,
    run_manual_discovery,
)
from exoquic.discovery.peers import PeerEvent, PeerEventKind
from exoquic.identity.keys import Identity
from exoquic.identity.trust import TrustStore

A, B = Identity.generate(), Identity.generate()


def document(*entries: dict[str, object]) -> str:
    return json.dumps({"peers": list(entries)}, indent=2)


def entry(identity: Identity, host: str = "198.18.0.2", port: int = 52417) -> dict[str, object]:
    return {"id": identity.node_id, "host": host, "port": port}


@pytest.fixture
def trust(tmp_path: Path) -> TrustStore:
    store = TrustStore(tmp_path / "trust.json")
    store.add(A.public_key, "a")
    store.add(B.public_key, "b")
    return store


def test_parses_entries_and_canonicalizes_ids() -> None:
    text = document(
        {"id": A.node_id.lower(), "host": "studio.local", "port": 1, "name": "studio"},
        entry(B, host="fe80::1"),
    )
    assert parse_manual_peers(text) == [
        ManualPeer(A.node_id, "studio.local", 1, "studio"),
        ManualPeer(B.node_id, "fe80::1", 52417),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"peers": [\n  {"id": 1,}\n]}', r"invalid JSON at line 2 column 12"),
        ("[]", r'expected an object \{"peers": \[...\]\}'),
        ('{"peers": {}}', "'peers' must be a list"),
        (document({"host": "h", "port": 1}), r"peers\[0\]: missing 'id'"),
        (document(entry(A) | {"hots": "x"}), r"peers\[0\]: unknown field 'hots'"),
        (document(entry(A) | {"id": "exq-0000"}), r"peers\[0\]\.id: node id 'exq-0000' has"),
        (document(entry(A), entry(B, port=0)), r"peers\[1\]\.port: expected an integer 1-65535"),
        (document(entry(A, host="bad host")), r"peers\[0\]\.host: expected an IP address"),
        (document(entry(A) | {"name": ""}), r"peers\[0\]\.name"),
        (document(entry(A), entry(A)), r"peers\[1\]: exq-.* is listed twice"),
    ],
)
def test_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ManualPeersError, match=message):
        parse_manual_peers(text, "peers.json")


def test_reload_reports_changes(tmp_path: Path, trust: TrustStore) -> None:
    path = tmp_path / "peers.json"
    peers = ManualPeerFile(path, trust)
    assert peers.check() == []  # no file yet: no peers
    path.write_text(document(entry(A)))
    [event] = peers.check()
    assert event.kind is PeerEventKind.APPEARED
    assert (event.peer.node_id, event.peer.addresses, event.peer.port) == (
        A.node_id,
        ("198.18.0.2",),
        52417,
    )
    assert (event.peer.source, event.peer.public_key) == ("manual", None)
    assert peers.check() == []  # unchanged
    path.write_text(document(entry(A, port=6000), entry(B)))
    kinds = {(e.kind, e.peer.node_id) for e in peers.check()}
    assert kinds == {(PeerEventKind.UPDATED, A.node_id), (PeerEventKind.APPEARED, B.node_id)}
    path.write_text(document(entry(B)))
    assert [(e.kind, e.peer.node_id) for e in peers.check()] == [(PeerEventKind.EXPIRED, A.node_id)]


def test_invalid_file_keeps_previous_peers(
    tmp_path: Path, trust: TrustStore, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "peers.json"
    path.write_text(document(entry(A)))
    peers = ManualPeerFile(path, trust)
    peers.check()
    path.write_text('{"peers": [')
    with caplog.at_level(logging.ERROR):
        assert peers.check() == []
    assert "invalid JSON at line 1 column 12" in caplog.text
    assert "keeping the previous peers" in caplog.text
    assert list(peers.peers()) == [A.node_id]


def test_listing_an_untrusted_id_grants_nothing(
    tmp_path: Path, trust: TrustStore, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = Identity.generate()
    path = tmp_path / "peers.json"
    path.write_text(document(entry(stranger)))
    peers = ManualPeerFile(path, trust)
    with caplog.at_level(logging.WARNING):
        assert peers.check() == []
    assert f"lists {stranger.node_id}, which is not trusted" in caplog.text
    # Trusting it later (pairing) makes the listed entry count, without a file change.
    trust.add_by_id(stranger.node_id, "stranger")
    assert [e.kind for e in peers.check()] == [PeerEventKind.APPEARED]


async def test_running_discovery_picks_up_edits(tmp_path: Path, trust: TrustStore) -> None:
    path = tmp_path / "peers.json"
    path.write_text(document(entry(A)))
    send, receive = trio.open_memory_channel[PeerEvent](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_manual_discovery(
                path, trust, send, poll_interval=0.05, task_status=task_status
            )
        )
        with trio.fail_after(2):
            assert (await receive.receive()).peer.node_id == A.node_id
            path.write_text(document(entry(A), entry(B)))
            event = await receive.receive()
        assert (event.kind, event.peer.node_id) == (PeerEventKind.APPEARED, B.node_id)
        nursery.cancel_scope.cancel()


def test_deeply_nested_json_is_an_invalid_file() -> None:
    with pytest.raises(ManualPeersError, match="nested too deeply"):
        parse_manual_peers("[" * 100_000, "peers.json")


def test_a_running_node_survives_a_hostile_peers_file(tmp_path: Path) -> None:
    """A real `python -m exoquic.discovery` process: a peers.json nested
    100,000 deep is reported and skipped, and the next valid one is used."""
    home = tmp_path / "home"
    home.mkdir()
    TrustStore.open(home).add(A.public_key, "a")
    (home / "peers.json").write_text('{"peers": ' + "[" * 100_000)
    command = [sys.executable, "-m", "exoquic.discovery", "--home", str(home)]
    node = NodeProcess([*command, "--methods", "manual"])
    try:
        node.wait_for(lambda line: "ready" in line, timeout=30)
        (home / "peers.json").write_text(document(entry(A)))
        _, line = node.wait_for(lambda line: line.get("event") == "appeared", timeout=10)
        assert line["node_id"] == A.node_id
        assert "nested too deeply (keeping the previous peers)" in node.stderr_text()
    finally:
        node.kill()
