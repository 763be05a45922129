"""`open_discovery`: the chosen discovery methods as one stream of peer events.

    async with open_discovery(["multicast", "manual"], identity=..., trust=...,
                              port=quic_port, name="studio",
                              capabilities=caps.to_dict()) as discovery:
        async for event in discovery.events:
            ...  # PeerEvent: APPEARED / UPDATED / EXPIRED (and CANDIDATE)

A node found by several methods is one peer: its `PeerInfo` is merged
(`merge_peer_infos`), it appears when the first method finds it and expires
when the last one loses it. Pairing candidates pass through unmerged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import trio

from exoquic import paths
from exoquic.discovery.manual import run_manual_discovery
from exoquic.discovery.multicast import MulticastDiscovery, MulticastSettings
from exoquic.discovery.peers import PeerEvent, PeerEventKind, PeerInfo, merge_peer_infos
from exoquic.discovery.tailscale import Probe, run_tailscale_discovery
from exoquic.identity.keys import Identity

METHODS = ("multicast", "manual", "tailscale")
PEERS_FILENAME = "peers.json"


class Trust(Protocol):
    """The trust store as discovery uses it (`identity.trust.TrustStore` fits)."""

    def is_trusted(self, public_key: bytes) -> bool: ...

    def get(self, node_id: str) -> object | None: ...


def parse_methods(text: str) -> list[str]:
    """`"multicast,manual"` -> `["multicast", "manual"]`, for a `--discovery` option.

    Raises ValueError naming an unknown method.
    """
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    for method in methods:
        if method not in METHODS:
            raise ValueError(
                f"unknown discovery method {method!r} (choose from {', '.join(METHODS)})"
            )
    if not methods:
        raise ValueError(f"no discovery method given (choose from {', '.join(METHODS)})")
    return list(dict.fromkeys(methods))


@dataclass
class PeerMerger:
    """Per-method peer events in, one event stream per node out (pure)."""

    _by_node: dict[str, dict[str, PeerInfo]] = field(default_factory=dict)
    _merged: dict[str, PeerInfo] = field(default_factory=dict)

    def handle(self, event: PeerEvent) -> PeerEvent | None:
        """The merged event caused by one method's event, if any."""
        if event.kind is PeerEventKind.CANDIDATE:
            return event
        node_id = event.peer.node_id
        sources = self._by_node.setdefault(node_id, {})
        if event.kind is PeerEventKind.EXPIRED:
            sources.pop(event.peer.source, None)
        else:
            sources[event.peer.source] = event.peer
        before = self._merged.get(node_id)
        if not sources:
            del self._by_node[node_id]
            self._merged.pop(node_id, None)
            return None if before is None else PeerEvent(PeerEventKind.EXPIRED, before)
        after = merge_peer_infos(sources.values())
        self._merged[node_id] = after
        if before is None:
            return PeerEvent(PeerEventKind.APPEARED, after)
        if before != after or event.kind is PeerEventKind.UPDATED:
            # An update that leaves the merged view equal is still news (a restart).
            return PeerEvent(PeerEventKind.UPDATED, after)
        return None

    def peers(self) -> dict[str, PeerInfo]:
        return dict(self._merged)


@dataclass
class Discovery:
    """A running discovery: read `events`; `multicast` is set when that method runs
    (toggle `multicast.pairing`, read `multicast.table.statistics()`)."""

    events: trio.MemoryReceiveChannel[PeerEvent]
    merger: PeerMerger
    multicast: MulticastDiscovery | None

    def peers(self) -> dict[str, PeerInfo]:
        """The trusted peers known now, merged across methods, by node id."""
        return self.merger.peers()


@asynccontextmanager
async def open_discovery(
    methods: Sequence[str],
    *,
    identity: Identity,
    trust: Trust,
    port: int,
    name: str,
    capabilities: Mapping[str, Any],
    addresses: Sequence[str] | None = None,
    peers_file: Path | None = None,
    probe: Probe | None = None,
    multicast_settings: MulticastSettings | None = None,
    pairing: bool = False,
) -> AsyncIterator[Discovery]:
    """Run `methods` (names from `METHODS`) until the block exits.

    `port` is this node's QUIC port (announced, and probed on Tailscale
    devices); `name`, `capabilities` and `addresses` go into multicast
    announcements. `peers_file` defaults to `peers.json` in the node's home.
    `probe` (an exoquic handshake returning the peer's key) is required for
    "tailscale". Raises ValueError for unknown methods, OSError if the
    multicast port cannot be bound.
    """
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown discovery method {method!r}")
    if "tailscale" in methods and probe is None:
        raise ValueError("tailscale discovery needs a probe (the transport's handshake)")
    raw_send, raw_receive = trio.open_memory_channel[PeerEvent](64)
    out_send, out_receive = trio.open_memory_channel[PeerEvent](64)
    merger = PeerMerger()
    multicast = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_merge, raw_receive, out_send, merger)
        if "multicast" in methods:
            multicast = MulticastDiscovery(
                identity,
                trust,
                port=port,
                name=name,
                capabilities=capabilities,
                addresses=addresses,
                settings=multicast_settings,
                pairing=pairing,
            )
            await nursery.start(multicast.run, raw_send.clone())
        if "manual" in methods:
            path = peers_file if peers_file is not None else paths.home() / PEERS_FILENAME
            await nursery.start(run_manual_discovery, path, trust, raw_send.clone())
        if "tailscale" in methods and probe is not None:
            tailscale = partial(run_tailscale_discovery, port=port)
            await nursery.start(tailscale, trust, probe, raw_send.clone())
        raw_send.close()  # the merger stops once every method has stopped
        try:
            yield Discovery(out_receive, merger, multicast)
        finally:
            nursery.cancel_scope.cancel()


async def _merge(
    raw: trio.MemoryReceiveChannel[PeerEvent],
    out: trio.MemorySendChannel[PeerEvent],
    merger: PeerMerger,
) -> None:
    async with out:
        async for event in raw:
            merged = merger.handle(event)
            if merged is not None:
                await out.send(merged)
