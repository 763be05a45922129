"""The multicast peer table: datagrams in, peer events out (sans-IO, explicit `now`).

Every datagram goes through, in this order:

1. a token bucket for its source address and one for all sources, so a flood
   (even from spoofed addresses) costs bounded CPU before any signature check;
2. `decode_and_verify` (size cap, strict CBOR, ed25519 signature);
3. the trust store: announcements of untrusted keys are dropped, except in
   pairing mode, where they become pairing candidates (never peers);
4. replay protection per node: within one instance id the sequence number must
   grow; a new instance id is a restart, but an instance id the node already
   left behind is a replay.

Peers that send nothing valid for `expire_after` seconds expire.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Protocol

from exoquic.discovery.announcement import (
    AnnouncementError,
    BadSignature,
    UnsupportedVersion,
    decode_and_verify,
)
from exoquic.discovery.peers import PeerEvent, PeerEventKind, PeerInfo

# How many instance ids per node are remembered as finished (restarts).
_RETIRED_INSTANCES = 8


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
    """Datagrams per second (and burst) allowed per source address and in total.

    The per-source default leaves room for several nodes on one host and the
    fast start (2 datagrams/s each) with a wide margin.
    """

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
class _History:
    """The newest (instance id, sequence) of a trusted node, and its past instances."""

    instance_id: bytes
    sequence: int
    retired: deque[bytes] = field(default_factory=lambda: deque(maxlen=_RETIRED_INSTANCES))


@dataclass
class _Entry:
    info: PeerInfo
    instance_id: bytes
    sequence: int
    last_seen: float


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
    _history: dict[str, _History] = field(default_factory=dict, init=False)
    _buckets: OrderedDict[str, TokenBucket] = field(default_factory=OrderedDict, init=False)
    _total_bucket: TokenBucket | None = field(default=None, init=False)
    _stats: TableStatistics = field(default_factory=TableStatistics, init=False)

    def receive(self, data: bytes, source: str, now: float) -> list[PeerEvent]:
        """Handle one datagram from IP address `source`; returns the events it causes."""
        if not self._admit(source, now):
            self._stats.rate_limited += 1
            return []
        try:
            announcement = decode_and_verify(data)
        except AnnouncementError as exc:
            self._count_rejection(exc)
            return []
        key = announcement.public_key
        if key == self.own_public_key:
            self._stats.own += 1
            return []
        addresses = announcement.addresses
        if source not in addresses:
            addresses = (*addresses, source)
        info = PeerInfo(
            node_id=announcement.node_id,
            addresses=addresses,
            port=announcement.port,
            source="multicast",
            public_key=key,
            name=announcement.name,
            capabilities=announcement.capabilities,
        )
        entry = _Entry(info, announcement.instance_id, announcement.sequence, now)
        if self.trust.is_trusted(key):
            return self._update_peer(entry)
        self._stats.untrusted += 1
        events = self._forget_peer(info.node_id)  # trust was revoked
        if self.pairing:
            events += self._update_candidate(entry)
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

    def _admit(self, source: str, now: float) -> bool:
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

    def _update_peer(self, entry: _Entry) -> list[PeerEvent]:
        node_id = entry.info.node_id
        if not self._record_fresh(entry):
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
        if old is not None and _same_instance_not_newer(old, entry):
            self._stats.replayed += 1
            return []
        if old is None and len(self._candidates) >= self.max_candidates:
            return []
        self._candidates[node_id] = entry
        if old is None or old.info != entry.info:
            return [PeerEvent(PeerEventKind.CANDIDATE, entry.info)]
        return []

    def _record_fresh(self, entry: _Entry) -> bool:
        """Whether `entry` is newer than anything this trusted node sent before
        (kept across expiry, so a cut link that heals is not a restart and old
        datagrams stay replays); records it if so."""
        history = self._history.get(entry.info.node_id)
        if history is None:
            self._history[entry.info.node_id] = _History(entry.instance_id, entry.sequence)
            return True
        if entry.instance_id in history.retired:
            return False
        if entry.instance_id == history.instance_id:
            if entry.sequence <= history.sequence:
                return False
        else:  # a restart
            history.retired.append(history.instance_id)
            history.instance_id = entry.instance_id
        history.sequence = entry.sequence
        return True

    def _forget_peer(self, node_id: str) -> list[PeerEvent]:
        entry = self._peers.pop(node_id, None)
        return [] if entry is None else [PeerEvent(PeerEventKind.EXPIRED, entry.info)]

    def _stale(self, entry: _Entry, now: float) -> bool:
        return now - entry.last_seen >= self.expire_after


def _same_instance_not_newer(old: _Entry, new: _Entry) -> bool:
    return old.instance_id == new.instance_id and new.sequence <= old.sequence
