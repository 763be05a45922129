"""Which client Initials may take a connection slot (sans-IO bookkeeping, no trio).

Before a peer authenticates, anyone can make a server hold state for it: a
1200-byte datagram shaped like a QUIC Initial is enough. The endpoint asks
`Admission.decide` what to do with each Initial for an unknown connection id:

- take a slot (`ACCEPT`) while the table is less than `retry_above` full;
- above that, answer with a stateless Retry (`RETRY`) and take a slot only for
  an Initial that echoes a valid Retry token, which proves the sender receives
  packets at its source address (spoofed floods stop there);
- never keep more than `max_per_source` unfinished handshakes for one source
  address (`DROP` beyond; an IPv6 /64 counts as one address, see
  `source_of`), so one host cannot fill the table alone;
- when the table is full, make room by evicting an unfinished handshake
  (`EVICT`) rather than refusing: the oldest one of the source holding the
  most, if that is more than the newcomer's source holds. Authenticated
  connections are never evicted, and a flood from a few addresses evicts
  its own handshakes, not a trusted peer's.

Unfinished handshakes also expire after `TransportConfig.handshake_timeout`
(the connection enforces that); this table only counts them.
"""

from __future__ import annotations

import enum
import ipaddress
import math
from collections import Counter
from dataclasses import dataclass
from typing import Generic, TypeVar

_C = TypeVar("_C")


class Verdict(enum.Enum):
    ACCEPT = "accept"
    """Take a slot."""
    RETRY = "retry"
    """Answer with a Retry packet; keep nothing."""
    EVICT = "evict"
    """Take a slot after dropping `Admission.eviction_candidate()`."""
    DROP = "drop"
    """Ignore the datagram."""


@dataclass
class AdmissionStatistics:
    """What admission did to client Initials so far (`Endpoint.statistics()`)."""

    accepted: int = 0
    retries: int = 0  # Retry packets sent
    dropped: int = 0  # Initials ignored (per-source cap, full table, bad token)
    evicted: int = 0  # unfinished handshakes dropped to make room


def source_of(host: str) -> str:
    """The "source address" the per-source limits count: an IPv4 address
    (also written v4-mapped), or an IPv6 /64, since one host commonly holds
    a whole /64 and could otherwise spread a flood over it."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip), 64), strict=False))
    return str(ip)


class Admission(Generic[_C]):
    """Tracks unfinished server side handshakes, oldest first and per source address.

    `_C` is the endpoint's connection type; this class only hashes them.
    """

    def __init__(self, max_connections: int, *, retry_above: float, max_per_source: int) -> None:
        if max_connections < 1 or max_per_source < 1:
            raise ValueError("max_connections and max_per_source must be at least 1")
        if not 0.0 <= retry_above <= 1.0:
            raise ValueError("retry_above must be a fraction of the table, 0..1")
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        # 1.0 means never: not even a full table asks for Retry (it evicts).
        self._retry_from = math.inf if retry_above >= 1.0 else int(max_connections * retry_above)
        self._pending: dict[_C, str] = {}  # unfinished handshakes, oldest first
        self._per_source: Counter[str] = Counter()
        self.stats = AdmissionStatistics()

    def decide(self, source: str, *, in_use: int, validated: bool) -> Verdict:
        """What to do with a client Initial from `source` for a new connection
        while `in_use` connections (of any kind) are open; `validated` when it
        carries a valid Retry token."""
        verdict = self._verdict(source, in_use, validated)
        if verdict is Verdict.ACCEPT:
            self.stats.accepted += 1
        elif verdict is Verdict.RETRY:
            self.stats.retries += 1
        elif verdict is Verdict.EVICT:
            self.stats.accepted += 1
            self.stats.evicted += 1
        else:
            self.stats.dropped += 1
        return verdict

    def _verdict(self, source: str, in_use: int, validated: bool) -> Verdict:
        if self._per_source[source] >= self.max_per_source:
            return Verdict.DROP
        if not validated and in_use >= self._retry_from:
            return Verdict.RETRY
        if in_use < self.max_connections:
            return Verdict.ACCEPT
        heaviest = max(self._per_source.values(), default=0)
        return Verdict.EVICT if heaviest > self._per_source[source] else Verdict.DROP

    def eviction_candidate(self) -> _C:
        """The oldest unfinished handshake of the source that holds the most."""
        heaviest = max(self._per_source, key=self._per_source.__getitem__)
        return next(c for c, source in self._pending.items() if source == heaviest)

    def add(self, connection: _C, source: str) -> None:
        """A new server side connection from `source`, handshaking."""
        self._pending[connection] = source
        self._per_source[source] += 1

    def authenticated(self, connection: _C) -> None:
        """The connection finished its handshake: it no longer counts as pending."""
        self._unpend(connection)

    def remove(self, connection: _C) -> None:
        """The connection is gone (whatever its state)."""
        self._unpend(connection)

    def pending_from(self, source: str) -> int:
        return self._per_source[source]

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _unpend(self, connection: _C) -> None:
        source = self._pending.pop(connection, None)
        if source is not None:
            self._per_source[source] -= 1
            if not self._per_source[source]:
                del self._per_source[source]
