"""PeerTable: replay, trust, pairing, rate limit and expiry with explicit time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cbor2
import pytest

from exoquic.discovery.announcement import encode_announcement
from exoquic.discovery.peer_table import PeerTable, RateLimits, TokenBucket
from exoquic.discovery.peers import PeerEvent, PeerEventKind
from exoquic.identity.keys import Identity
from exoquic.identity.trust import TrustStore

APPEARED, UPDATED, EXPIRED = PeerEventKind.APPEARED, PeerEventKind.UPDATED, PeerEventKind.EXPIRED
SOURCE = "198.18.0.2"


class Sender:
    """A node producing announcements the way the multicast service does."""

    def __init__(self, identity: Identity | None = None, name: str = "peer") -> None:
        self.identity = identity or Identity.generate()
        self.name = name
        self.instance_id = bytes(range(16))
        self.start_time = 1_800_000_000_000_000
        self.sequence = 0

    def next(self, **overrides: object) -> bytes:
        self.sequence += 1
        fields: dict[str, object] = {
            "name": self.name,
            "port": 52417,
            "addresses": ["198.18.0.2"],
            "capabilities": {"engine": "tinygrad"},
            "start_time": self.start_time,
            "instance_id": self.instance_id,
            "sequence": self.sequence,
        }
        fields.update(overrides)
        return encode_announcement(self.identity, **fields)  # type: ignore[arg-type]

    def restart(self, seconds_later: float = 60.0) -> None:
        """A new process: another instance id, a start `seconds_later` (negative:
        the clock went back)."""
        self.instance_id = bytes([(self.instance_id[0] + 1) % 256]) + self.instance_id[1:]
        self.start_time += int(seconds_later * 1_000_000)
        self.sequence = 0


@pytest.fixture
def trust(tmp_path: Path) -> TrustStore:
    return TrustStore(tmp_path / "trust.json")


@pytest.fixture
def sender(trust: TrustStore) -> Sender:
    sender = Sender()
    trust.add(sender.identity.public_key, "peer")
    return sender


def kinds(events: list[PeerEvent]) -> list[PeerEventKind]:
    return [event.kind for event in events]


def test_trusted_peer_appears_with_its_details(trust: TrustStore, sender: Sender) -> None:
    table = PeerTable(trust)
    [event] = table.receive(sender.next(), SOURCE, now=0.0)
    assert event.kind is APPEARED
    peer = event.peer
    assert peer.node_id == sender.identity.node_id
    assert peer.public_key == sender.identity.public_key
    assert (peer.name, peer.port, peer.source) == ("peer", 52417, "multicast")
    assert peer.addresses == ("198.18.0.2",)
    assert dict(peer.capabilities) == {"engine": "tinygrad"}
    assert table.peers() == {peer.node_id: peer}


def test_source_address_is_added_when_not_announced(trust: TrustStore, sender: Sender) -> None:
    [event] = PeerTable(trust).receive(sender.next(addresses=[]), "198.18.0.9", now=0.0)
    assert event.peer.addresses == ("198.18.0.9",)


def test_same_announcement_again_is_silent_and_change_is_an_update(
    trust: TrustStore, sender: Sender
) -> None:
    table = PeerTable(trust)
    table.receive(sender.next(), SOURCE, now=0.0)
    assert table.receive(sender.next(), SOURCE, now=1.0) == []
    [event] = table.receive(sender.next(port=6000), SOURCE, now=2.0)
    assert (event.kind, event.peer.port) == (UPDATED, 6000)


def test_replays_are_dropped(trust: TrustStore, sender: Sender) -> None:
    table = PeerTable(trust)
    old = sender.next(port=1111)
    table.receive(old, SOURCE, now=0.0)
    table.receive(sender.next(port=2222), SOURCE, now=1.0)
    assert table.receive(old, SOURCE, now=2.0) == []  # older sequence
    assert table.receive(sender.next(port=2222), SOURCE, now=2.0) == []
    current = sender.next(port=2222)
    table.receive(current, SOURCE, now=3.0)
    assert table.receive(current, SOURCE, now=3.1) == []  # same sequence
    assert table.peers()[sender.identity.node_id].port == 2222
    assert table.statistics().replayed == 2


def test_restart_is_accepted_and_old_instance_stays_a_replay(
    trust: TrustStore, sender: Sender
) -> None:
    table = PeerTable(trust)
    before_restart = sender.next(sequence=100)
    table.receive(before_restart, SOURCE, now=0.0)
    sender.restart()
    [event] = table.receive(sender.next(), SOURCE, now=1.0)  # sequence 1, new instance
    assert event.kind is UPDATED
    assert table.receive(before_restart, SOURCE, now=2.0) == []
    assert table.statistics().replayed == 1


def test_peer_expires_and_comes_back_after_a_cut_link(trust: TrustStore, sender: Sender) -> None:
    table = PeerTable(trust, expire_after=6.0)
    table.receive(sender.next(), SOURCE, now=0.0)
    table.receive(sender.next(), SOURCE, now=2.0)
    assert table.next_expiry() == 8.0
    assert table.expire(now=7.9) == []
    [event] = table.expire(now=8.0)
    assert event.kind is EXPIRED
    assert table.peers() == {} and table.next_expiry() is None
    # The same process again (same instance, higher sequence) reappears.
    assert kinds(table.receive(sender.next(), SOURCE, now=20.0)) == [APPEARED]


def test_replay_after_expiry_does_not_revive_the_peer(trust: TrustStore, sender: Sender) -> None:
    table = PeerTable(trust, expire_after=6.0)
    captured = sender.next()
    table.receive(captured, SOURCE, now=0.0)
    table.expire(now=10.0)
    assert table.receive(captured, SOURCE, now=11.0) == []
    assert table.peers() == {}


def test_untrusted_keys_are_ignored(trust: TrustStore) -> None:
    table = PeerTable(trust)
    assert table.receive(Sender().next(), SOURCE, now=0.0) == []
    assert table.peers() == {} and table.pairing_candidates() == {}
    assert table.statistics().untrusted == 1


def test_pairing_mode_reports_untrusted_keys_as_candidates_only(trust: TrustStore) -> None:
    table = PeerTable(trust, pairing=True)
    stranger = Sender(name="new-laptop")
    [event] = table.receive(stranger.next(), SOURCE, now=0.0)
    assert event.kind is PeerEventKind.CANDIDATE
    assert table.peers() == {}
    assert list(table.pairing_candidates()) == [stranger.identity.node_id]
    # Once paired (trusted), the same node becomes a peer.
    trust.add(stranger.identity.public_key, "new-laptop")
    assert kinds(table.receive(stranger.next(), SOURCE, now=1.0)) == [APPEARED]
    assert table.pairing_candidates() == {}


def test_revoked_trust_expires_the_peer(trust: TrustStore, sender: Sender) -> None:
    table = PeerTable(trust)
    table.receive(sender.next(), SOURCE, now=0.0)
    trust.remove(sender.identity.node_id)
    assert kinds(table.receive(sender.next(), SOURCE, now=1.0)) == [EXPIRED]


def test_forged_signature_changes_nothing(trust: TrustStore, sender: Sender) -> None:
    table = PeerTable(trust)
    table.receive(sender.next(), SOURCE, now=0.0)
    version, key, body, _signature = cbor2.loads(sender.next(port=9999))
    forged = cbor2.dumps([version, key, body, bytes(64)])
    assert table.receive(forged, SOURCE, now=1.0) == []
    assert table.peers()[sender.identity.node_id].port == 52417
    assert table.statistics().bad_signature == 1


def test_own_announcements_are_ignored(trust: TrustStore, sender: Sender) -> None:
    table = PeerTable(trust, own_public_key=sender.identity.public_key)
    assert table.receive(sender.next(), SOURCE, now=0.0) == []
    assert table.statistics().own == 1


def test_replay_of_an_earlier_run_never_seen_does_not_lock_the_node_out(
    trust: TrustStore, sender: Sender
) -> None:
    table = PeerTable(trust)
    captured = sender.next()  # from a run the table never heard
    sender.restart()
    table.receive(sender.next(), SOURCE, now=0.0)
    assert table.receive(captured, SOURCE, now=1.0) == []
    # The live instance is still the peer, and its next announcements count.
    [event] = table.receive(sender.next(port=6000), SOURCE, now=2.0)
    assert (event.kind, event.peer.port) == (UPDATED, 6000)
    assert table.statistics().replayed == 1


def test_a_restart_with_an_earlier_start_waits_until_the_old_run_is_silent(
    trust: TrustStore, sender: Sender
) -> None:
    table = PeerTable(trust, expire_after=6.0)
    table.receive(sender.next(), SOURCE, now=0.0)
    sender.restart(seconds_later=-3600)  # a board without a real-time clock
    assert table.receive(sender.next(), SOURCE, now=1.0) == []
    assert kinds(table.receive(sender.next(port=6000), SOURCE, now=6.0)) == [UPDATED]
    assert table.peers()[sender.identity.node_id].port == 6000


def test_a_replay_while_the_node_is_away_gives_way_to_its_return(
    trust: TrustStore, sender: Sender
) -> None:
    table = PeerTable(trust, expire_after=6.0)
    captured = sender.next(port=1111)  # from a run the table never heard
    sender.restart()
    table.receive(sender.next(), SOURCE, now=0.0)
    table.expire(now=6.0)
    # The node is away: the old datagram shows it at its old port until it expires...
    assert kinds(table.receive(captured, SOURCE, now=7.0)) == [APPEARED]
    # ...and the live instance takes over at its next announcement.
    [event] = table.receive(sender.next(), SOURCE, now=8.0)
    assert (event.kind, event.peer.port) == (UPDATED, 52417)
    assert table.receive(captured, SOURCE, now=9.0) == []


def test_untrusted_keys_are_dropped_before_any_signature_check(trust: TrustStore) -> None:
    table = PeerTable(trust)
    version, key, body, _signature = cbor2.loads(Sender().next())
    forged = cbor2.dumps([version, key, body, bytes(64)])
    for _ in range(2000):
        assert table.receive(forged, SOURCE, now=0.0) == []
    stats = table.statistics()
    assert (stats.untrusted, stats.bad_signature, stats.rate_limited) == (2000, 0, 0)


def test_a_flood_under_other_keys_leaves_a_trusted_peer_its_budget(
    trust: TrustStore, sender: Sender
) -> None:
    other = Sender()
    trust.add(other.identity.public_key, "other")
    limits = RateLimits(per_key=1.0, per_key_burst=5.0, total=10.0, total_burst=10.0)
    table = PeerTable(trust, limits=limits, pairing=True)
    version, key, body, _signature = cbor2.loads(other.next())
    forged = cbor2.dumps([version, key, body, bytes(64)])  # other's key, junk signature
    junk = Sender().next()  # an untrusted key, checked in pairing mode
    for index in range(1000):
        table.receive(forged, SOURCE, now=0.0)
        table.receive(junk, f"198.18.1.{index % 250}", now=0.0)
    assert kinds(table.receive(sender.next(), SOURCE, now=0.0)) == [APPEARED]
    stats = table.statistics()
    assert stats.bad_signature == 5  # other's burst; then its bucket is empty
    # other's key over its burst, and the junk over the overall budget of untrusted keys
    assert stats.rate_limited == 995 + 990
    assert (stats.accepted, len(table.pairing_candidates())) == (1, 1)


def test_untrusted_keys_are_rate_limited_per_source_in_pairing_mode(trust: TrustStore) -> None:
    table = PeerTable(trust, limits=RateLimits(per_source=1.0, per_source_burst=3.0), pairing=True)
    stranger = Sender()
    for _ in range(3):
        table.receive(stranger.next(), SOURCE, now=0.0)
    # The flooding source's bucket is empty: even a valid datagram is refused...
    assert table.receive(Sender().next(), SOURCE, now=0.0) == []
    # ...while another source is unaffected, and the first one recovers with time.
    candidate = table.receive(Sender().next(), "198.18.0.3", now=0.0)
    assert kinds(candidate) == [PeerEventKind.CANDIDATE]
    assert table.receive(Sender().next(), SOURCE, now=1.0) != []
    stats = table.statistics()
    assert (stats.rate_limited, len(table.pairing_candidates())) == (1, 3)


def test_total_rate_limit_caps_spoofed_sources_in_pairing_mode(trust: TrustStore) -> None:
    limits = RateLimits(total=10.0, total_burst=10.0, max_sources=4)
    table = PeerTable(trust, limits=limits, pairing=True)
    version, key, body, _signature = cbor2.loads(Sender().next())
    forged = cbor2.dumps([version, key, body, bytes(64)])
    for index in range(50):
        table.receive(forged, f"198.18.1.{index}", now=0.0)
    stats = table.statistics()
    assert (stats.bad_signature, stats.rate_limited) == (10, 40)


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket.full(rate=2.0, burst=2.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [True, True, False]
    assert bucket.take(0.5) and not bucket.take(0.5)
    assert bucket.take(10.0) and bucket.take(10.0) and not bucket.take(10.0)


def test_pure_parts_import_no_trio_or_sockets() -> None:
    code = (
        "import sys\n"
        "import exoquic.discovery.announcement, exoquic.discovery.peer_table\n"
        "print(sorted(m for m in ('trio', 'socket', 'psutil') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
