"""What every discovery method reports: `PeerInfo` and `PeerEvent` (pure data).

A peer is keyed by its node id. Finding a peer never makes it trusted: the
multicast table only reports keys the trust store already holds, manual and
Tailscale peers are filtered by trusted node id, and the transport pins the
peer's key when it connects.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

# When two sources report the same node, the first one here gives its port and
# leads the address list: a signed announcement comes from the node itself,
# the manual file from the user, Tailscale only tells where to probe.
SOURCE_PRIORITY = ("multicast", "manual", "tailscale")


@dataclass(frozen=True)
class PeerInfo:
    """Where a peer can be reached and what it says about itself.

    `public_key` (raw 32 bytes) is None when the source only knows the node id
    (manual file); `capabilities` is the peer's `DeviceCapabilities.to_dict()`
    when it announced one, else empty. `addresses` are IP address strings, best
    first; all share `port`, the peer's QUIC port. `source` is the discovery
    method ("multicast", "manual", "tailscale"), or several joined by "+" once
    merged by `open_discovery`.
    """

    node_id: str
    addresses: tuple[str, ...]
    port: int
    source: str
    public_key: bytes | None = None
    name: str | None = None
    capabilities: Mapping[str, Any] = field(default_factory=dict, hash=False)


class PeerEventKind(enum.Enum):
    APPEARED = "appeared"
    """A trusted peer was found."""
    UPDATED = "updated"
    """A known peer's details changed, or it restarted (new instance id)."""
    EXPIRED = "expired"
    """A peer stopped being seen (missed announcements, left the file, went offline)."""
    CANDIDATE = "candidate"
    """An untrusted key announced itself while pairing mode is on (never a peer)."""


@dataclass(frozen=True)
class PeerEvent:
    kind: PeerEventKind
    peer: PeerInfo


def diff_peers(old: Mapping[str, PeerInfo], new: Mapping[str, PeerInfo]) -> list[PeerEvent]:
    """The events that turn the peer set `old` into `new` (both keyed by node id)."""
    events = [
        PeerEvent(PeerEventKind.EXPIRED, peer) for node, peer in old.items() if node not in new
    ]
    for node, peer in new.items():
        before = old.get(node)
        if before is None:
            events.append(PeerEvent(PeerEventKind.APPEARED, peer))
        elif before != peer:
            events.append(PeerEvent(PeerEventKind.UPDATED, peer))
    return events


def merge_peer_infos(infos: Iterable[PeerInfo]) -> PeerInfo:
    """One view of a node reported by several sources (all with the same node id).

    The highest-priority source gives the port; addresses of sources that agree
    on that port follow its own; the key, name and capabilities come from the
    first source that knows them.
    """
    ranked = sorted(infos, key=_priority)
    if not ranked:
        raise ValueError("merge_peer_infos needs at least one PeerInfo")
    primary = ranked[0]
    addresses = list(primary.addresses)
    for info in ranked[1:]:
        if info.port == primary.port:
            addresses += [a for a in info.addresses if a not in addresses]
    return replace(
        primary,
        addresses=tuple(addresses),
        source="+".join(info.source for info in ranked),
        public_key=next((i.public_key for i in ranked if i.public_key is not None), None),
        name=next((i.name for i in ranked if i.name), None),
        capabilities=next((i.capabilities for i in ranked if i.capabilities), {}),
    )


def _priority(info: PeerInfo) -> int:
    try:
        return SOURCE_PRIORITY.index(info.source)
    except ValueError:
        return len(SOURCE_PRIORITY)
