"""Manual discovery: peers listed in a JSON file, re-read when it changes.

    {"peers": [
      {"id": "exq-7K3M-9QXA-2FHD-W8RB-C", "host": "198.18.0.2", "port": 52417,
       "name": "studio"}
    ]}

`host` is an IP address or a host name; `name` is optional. Listing a peer
does not make it trusted: entries whose node id is not in the trust store are
skipped with a warning, and the transport pins the key of whoever answers at
that address against the listed id. An invalid file is reported (with line
and column for JSON syntax errors) and the previous peers stay.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import trio

from exoquic.discovery.peers import PeerEvent, PeerInfo, diff_peers
from exoquic.identity.node_id import NodeIdError, parse_node_id

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 1.0
_FIELDS = {"id", "host", "port", "name"}
# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
_HOST_NAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?")


class IdTrust(Protocol):
    """What manual discovery needs from the trust store (`TrustStore` fits):
    the trusted entry for a node id, or None."""

    def get(self, node_id: str) -> object | None: ...


class ManualPeersError(ValueError):
    """The peers file is invalid; the message names the place and the problem."""


@dataclass(frozen=True)
class ManualPeer:
    node_id: str
    host: str
    port: int
    name: str | None = None


def parse_manual_peers(text: str, where: str = "peers file") -> list[ManualPeer]:
    """Parse and validate the file's text; `where` prefixes error messages."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManualPeersError(
            f"{where}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:  # the JSON parser recurses once per nesting level
        raise ManualPeersError(f"{where}: invalid JSON: nested too deeply") from None
    if not isinstance(document, dict) or set(document) != {"peers"}:
        raise ManualPeersError(f'{where}: expected an object {{"peers": [...]}}')
    entries = document["peers"]
    if not isinstance(entries, list):
        raise ManualPeersError(f"{where}: 'peers' must be a list")
    peers: list[ManualPeer] = []
    for index, entry in enumerate(entries):
        peer = _parse_entry(entry, f"{where}: peers[{index}]")
        if any(p.node_id == peer.node_id for p in peers):
            raise ManualPeersError(f"{where}: peers[{index}]: {peer.node_id} is listed twice")
        peers.append(peer)
    return peers


def _parse_entry(entry: Any, where: str) -> ManualPeer:
    if not isinstance(entry, dict):
        raise ManualPeersError(f"{where}: expected an object with id, host and port")
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ManualPeersError(
            f"{where}: unknown field {unknown[0]!r} (expected id, host, port, name)"
        )
    for required in ("id", "host", "port"):
        if required not in entry:
            raise ManualPeersError(f"{where}: missing {required!r}")
    node_id, host, port = entry["id"], entry["host"], entry["port"]
    name = entry.get("name")
    if not isinstance(node_id, str):
        raise ManualPeersError(f"{where}.id: expected a node id string, got {node_id!r}")
    try:
        node_id = parse_node_id(node_id)
    except NodeIdError as exc:
        raise ManualPeersError(f"{where}.id: {exc}") from None
    if not isinstance(host, str) or not _valid_host(host):
        raise ManualPeersError(f"{where}.host: expected an IP address or host name, got {host!r}")
    if type(port) is not int or not 1 <= port <= 65535:
        raise ManualPeersError(f"{where}.port: expected an integer 1-65535, got {port!r}")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ManualPeersError(f"{where}.name: expected a non-empty string, got {name!r}")
    return ManualPeer(node_id, host, port, name)


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return len(host) <= 253 and _HOST_NAME.fullmatch(host) is not None
    return True


class ManualPeerFile:
    """The peers of one file, checked on demand (sans trio: `check()` does the work)."""

    def __init__(self, path: Path, trust: IdTrust) -> None:
        self.path = path
        self.trust = trust
        self._text: str | None = None
        self._listed: list[ManualPeer] = []
        self._peers: dict[str, PeerInfo] = {}

    def check(self) -> list[PeerEvent]:
        """Re-read the file if it changed, re-apply trust, and return the events."""
        self._reload()
        trusted = {
            peer.node_id: PeerInfo(
                node_id=peer.node_id,
                addresses=(peer.host,),
                port=peer.port,
                source="manual",
                name=peer.name,
            )
            for peer in self._listed
            if self.trust.get(peer.node_id) is not None
        }
        events = diff_peers(self._peers, trusted)
        self._peers = trusted
        return events

    def peers(self) -> dict[str, PeerInfo]:
        return dict(self._peers)

    def _reload(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            text = '{"peers": []}'  # no file: no manual peers
        except (OSError, UnicodeDecodeError) as exc:
            log.error("cannot read %s (keeping the previous peers): %s", self.path, exc)
            return
        if text == self._text:
            return
        self._text = text
        try:
            listed = parse_manual_peers(text, str(self.path))
        except ManualPeersError as exc:
            log.error("%s (keeping the previous peers)", exc)
            return
        for peer in listed:
            if self.trust.get(peer.node_id) is None:
                log.warning(
                    "%s lists %s, which is not trusted: it is ignored until you pair "
                    "with it (`exoquic pair`)",
                    self.path,
                    peer.node_id,
                )
        self._listed = listed


async def run_manual_discovery(
    path: Path,
    trust: IdTrust,
    events: trio.MemorySendChannel[PeerEvent],
    *,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Report the trusted peers listed in `path`, checking it every `poll_interval`."""
    peer_file = ManualPeerFile(path, trust)
    first = peer_file.check()
    task_status.started()
    for event in first:
        await events.send(event)
    while True:
        await trio.sleep(poll_interval)
        for event in peer_file.check():  # a small local file: reading it does not block long
            await events.send(event)
