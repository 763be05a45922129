"""The multicast peer table: datagrams in, peer events out (sans-IO, explicit `now`).

Every datagram goes through, in this order:

1. `open_envelope`: size cap and strict CBOR of the outer array (microseconds,
   no public-key operation), so junk costs almost nothing;
2. our own key is ignored (our announcements loop back);
3. the trust store, *before* the signature: outside pairing mode an untrusted
   key is dropped unverified. In pairing mode untrusted keys are verified
   within a token bucket per source address and one for all sources, and
   become pairing candidates (never peers);
4. a token bucket per trusted key, so no flood under other keys can use up
   the budget of a trusted peer, and signature checks stay bounded;
5. `verify` (ed25519 signature, then the body's fields);
6. ordering per node: an announcement must be newer than the last one accepted,
   by (`start`, `seq`) within one instance id. A new instance id with a later
   `start` is a restart; one with an earlier or equal `start` (a replay of an
   earlier run, or a node whose clock went back) is accepted only once the
   current instance has been silent for `expire_after`.

Peers that send nothing valid for `expire_after` seconds expire.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

from exoquic.discovery.announcement import (
    Announcement,
    AnnouncementError,
    BadSignature,
    Envelope,
    UnsupportedVersion,
    open_envelope,
    verify,
)
from exoquic.discovery.peers import PeerEvent, PeerEventKind, PeerInfo
from exoquic.identity.node_id import node_id_from_public_key


class TrustChecker(Protocol):
    """What the table needs from the trust store (`identity.trust.TrustStore` fits)."""

    def is_trusted(self, public_key: bytes) -> bool: ...


@dataclass
class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; starts full."""

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass(frozen=True)
class RateLimits:
    """Signature checks per second (and burst) the table spends.

    `per_key`: for each trusted key. A node sends at most 2 datagrams/s per
    interface, so 50/s leaves a wide margin, while a flood of forgeries under
    one trusted key costs at most 50 checks/s (about 11 ms of CPU here).
    `per_source` and `total`: for untrusted keys, which are only checked in
    pairing mode; the per-source default leaves room for several nodes on one
    host and the fast start (2 datagrams/s each).
    """

    per_key: float = 50.0
    per_key_burst: float = 100.0
    per_source: float = 10.0
    per_source_burst: float = 20.0
    total: float = 500.0
    total_burst: float = 1000.0
    max_sources: int = 1024


@dataclass
class TableStatistics:
    """Counters of what happened to received datagrams."""

    accepted: int = 0
    rate_limited: int = 0
    malformed: int = 0
    bad_signature: int = 0
    unsupported_version: int = 0
    untrusted: int = 0
    replayed: int = 0
    own: int = 0


@dataclass
class _Entry:
    """The newest accepted announcement of a node: its peer info, its place in
    the node's order (start, instance id, sequence) and when it came."""

    info: PeerInfo
    start_time: int
    instance_id: bytes
    sequence: int
    last_seen: float

    def supersedes(self, other: _Entry, other_silent: bool) -> bool:
        """Whether this announcement may replace `other`, the node's last accepted
        one (`other_silent`: nothing accepted from the node for `expire_after`)."""
        if self.instance_id == other.instance_id:
            return self.start_time == other.start_time and self.sequence > other.sequence
        # Another instance: a later start is a restart. An earlier one is a replay
        # of an older run, or a restart with a clock set back (a board without a
        # real-time clock): let it in only when the current run has gone quiet,
        # so a replay can never push a live instance out.
        return self.start_time > other.start_time or other_silent


@dataclass
class PeerTable:
    """Trusted peers learnt from announcements.

    `expire_after` is usually the steady announcement interval times the
    number of announcements a peer may miss. `own_public_key` is ignored (our
    own announcements loop back to us). Set `pairing` to report untrusted
    keys as `CANDIDATE` events and in `pairing_candidates()`.
    """

    trust: TrustChecker
    own_public_key: bytes | None = None
    expire_after: float = 6.0
    limits: RateLimits = field(default_factory=RateLimits)
    pairing: bool = False
    max_candidates: int = 64
    _peers: dict[str, _Entry] = field(default_factory=dict, init=False)
    _candidates: dict[str, _Entry] = field(default_factory=dict, init=False)
    # The newest announcement accepted per trusted node, kept across expiry.
    _history: dict[str, _Entry] = field(default_factory=dict, init=False)
    _key_buckets: dict[bytes, TokenBucket] = field(default_factory=dict, init=False)
    _buckets: OrderedDict[str, TokenBucket] = field(default_factory=OrderedDict, init=False)
    _total_bucket: TokenBucket | None = field(default=None, init=False)
    _stats: TableStatistics = field(default_factory=TableStatistics, init=False)

    def receive(self, data: bytes, source: str, now: float) -> list[PeerEvent]:
        """Handle one datagram from IP address `source`; returns the events it causes."""
        try:
            envelope = open_envelope(data)
        except AnnouncementError as exc:
            self._count_rejection(exc)
            return []
        key = envelope.public_key
        if key == self.own_public_key:
            self._stats.own += 1
            return []
        if self.trust.is_trusted(key):
            announcement = self._verify(envelope, self._key_admits(key, now))
            if announcement is None:
                return []
            return self._update_peer(_entry(announcement, source, now), now)
        self._stats.untrusted += 1
        # Revoked trust ends a peer whatever the datagram says: no check needed.
        events = self._forget_peer(node_id_from_public_key(key))
        if self.pairing:  # only then is an untrusted key worth a signature check
            announcement = self._verify(envelope, self._source_admits(source, now))
            if announcement is not None:
                events += self._update_candidate(_entry(announcement, source, now))
        return events

    def expire(self, now: float) -> list[PeerEvent]:
        """Drop peers (and candidates) not heard from for `expire_after` seconds."""
        events = []
        for node_id in [n for n, e in self._peers.items() if self._stale(e, now)]:
            events += self._forget_peer(node_id)
        for node_id in [n for n, e in self._candidates.items() if self._stale(e, now)]:
            del self._candidates[node_id]
        return events

    def next_expiry(self) -> float | None:
        """When `expire` next has something to do (None: nothing to expire)."""
        seen = [e.last_seen for e in (*self._peers.values(), *self._candidates.values())]
        return min(seen) + self.expire_after if seen else None

    def peers(self) -> dict[str, PeerInfo]:
        """Current trusted peers by node id."""
        return {node_id: entry.info for node_id, entry in self._peers.items()}

    def pairing_candidates(self) -> dict[str, PeerInfo]:
        """Untrusted nodes heard while pairing mode was on, by node id."""
        return {node_id: entry.info for node_id, entry in self._candidates.items()}

    def statistics(self) -> TableStatistics:
        return TableStatistics(**vars(self._stats))

    def _verify(self, envelope: Envelope, admitted: bool) -> Announcement | None:
        """The verified announcement, or None (counted) when over budget or invalid."""
        if not admitted:
            self._stats.rate_limited += 1
            return None
        try:
            return verify(envelope)
        except AnnouncementError as exc:
            self._count_rejection(exc)
            return None

    def _key_admits(self, key: bytes, now: float) -> bool:
        """The trusted key's own budget: floods under other keys cannot spend it."""
        bucket = self._key_buckets.get(key)
        if bucket is None:
            # Only trusted keys get a bucket, so this dict is as small as the trust store.
            bucket = TokenBucket.full(self.limits.per_key, self.limits.per_key_burst, now)
            self._key_buckets[key] = bucket
        return bucket.take(now)

    def _source_admits(self, source: str, now: float) -> bool:
        """The budget of untrusted keys (pairing mode): per source and overall."""
        limits = self.limits
        if self._total_bucket is None:
            self._total_bucket = TokenBucket.full(limits.total, limits.total_burst, now)
        bucket = self._buckets.pop(source, None)
        if bucket is None:
            bucket = TokenBucket.full(limits.per_source, limits.per_source_burst, now)
            if len(self._buckets) >= limits.max_sources:
                # The least recently used source is the one most likely refilled.
                self._buckets.popitem(last=False)
        self._buckets[source] = bucket
        return bucket.take(now) and self._total_bucket.take(now)

    def _count_rejection(self, exc: AnnouncementError) -> None:
        if isinstance(exc, BadSignature):
            self._stats.bad_signature += 1
        elif isinstance(exc, UnsupportedVersion):
            self._stats.unsupported_version += 1
        else:
            self._stats.malformed += 1

    def _update_peer(self, entry: _Entry, now: float) -> list[PeerEvent]:
        node_id = entry.info.node_id
        if not self._record_fresh(entry, now):
            self._stats.replayed += 1
            return []
        self._stats.accepted += 1
        self._candidates.pop(node_id, None)
        old = self._peers.get(node_id)
        self._peers[node_id] = entry
        if old is None:
            return [PeerEvent(PeerEventKind.APPEARED, entry.info)]
        if old.info != entry.info or old.instance_id != entry.instance_id:
            return [PeerEvent(PeerEventKind.UPDATED, entry.info)]
        return []

    def _update_candidate(self, entry: _Entry) -> list[PeerEvent]:
        node_id = entry.info.node_id
        old = self._candidates.get(node_id)
        # Candidates keep no history (spoofed keys must not grow memory): only
        # the latest datagram of a live candidate is compared.
        if old is not None and not entry.supersedes(old, other_silent=False):
            self._stats.replayed += 1
            return []
        if old is None and len(self._candidates) >= self.max_candidates:
            return []
        self._candidates[node_id] = entry
        if old is None or old.info != entry.info:
            return [PeerEvent(PeerEventKind.CANDIDATE, entry.info)]
        return []

    def _record_fresh(self, entry: _Entry, now: float) -> bool:
        """Whether `entry` is newer than what this trusted node sent before
        (kept across expiry, so a cut link that heals is not a restart and old
        datagrams stay replays); records it if so."""
        node_id = entry.info.node_id
        last = self._history.get(node_id)
        if last is not None and not entry.supersedes(last, self._stale(last, now)):
            return False
        self._history[node_id] = entry
        return True

    def _forget_peer(self, node_id: str) -> list[PeerEvent]:
        entry = self._peers.pop(node_id, None)
        return [] if entry is None else [PeerEvent(PeerEventKind.EXPIRED, entry.info)]

    def _stale(self, entry: _Entry, now: float) -> bool:
        return now - entry.last_seen >= self.expire_after


def _entry(announcement: Announcement, source: str, now: float) -> _Entry:
    addresses = announcement.addresses
    if source not in addresses:
        addresses = (*addresses, source)
    info = PeerInfo(
        node_id=announcement.node_id,
        addresses=addresses,
        port=announcement.port,
        source="multicast",
        public_key=announcement.public_key,
        name=announcement.name,
        capabilities=announcement.capabilities,
    )
    return _Entry(
        info, announcement.start_time, announcement.instance_id, announcement.sequence, now
    )
