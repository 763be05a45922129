"""The trust store: which peers this node talks to, pinned by ed25519 key.

A JSON file in the home, mode 0600, rewritten atomically on every change:

    {"version": 1, "peers": [{"node_id": "exq-...", "name": "laptop",
      "public_key": "<64 hex digits or null>", "added_at": "2026-01-01T00:00:00+00:00"}]}

A peer added by node id alone (`add_by_id`) has no key yet: the first peer to
connect whose key hashes to that id is trusted (`is_trusted`) and its key is
then pinned (`pin_key`). Names are unique (case-insensitive), so a device that
claims a trusted name with another key is refused loudly (`TrustConflictError`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exoquic import paths
from exoquic.identity.files import file_signature, locked, loose_permissions, write_private_file
from exoquic.identity.node_id import (
    MAX_NAME_LENGTH,
    PUBLIC_KEY_SIZE,
    NodeIdError,
    is_valid_device_name,
    node_id_from_public_key,
    parse_node_id,
)

TRUST_FILENAME = "trust.json"
FORMAT_VERSION = 1


class TrustStoreError(Exception):
    """The trust file cannot be read or is malformed; the message names the place."""


class TrustConflictError(TrustStoreError):
    """A name or node id is already trusted with a different key."""


@dataclass(frozen=True)
class TrustedPeer:
    """One trusted device. `public_key` is None until an id-only entry first connects."""

    node_id: str
    name: str
    public_key: bytes | None
    added_at: datetime


class TrustStore:
    """Trusted peers, kept in `path`. Every change re-reads the file first and
    writes it back atomically, so a CLI and a running node can share it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._peers: dict[str, TrustedPeer] = {}
        self._signature: tuple[int, int, int] | None = None
        self.reload()

    @classmethod
    def open(cls, home: Path | None = None) -> TrustStore:
        """The trust store of the node whose home is `home` (default `paths.home()`)."""
        return cls((home if home is not None else paths.home()) / TRUST_FILENAME)

    def reload(self) -> None:
        """Re-read the file (an absent file is an empty store)."""
        signature = file_signature(self.path)
        self._peers = _read(self.path)
        self._signature = signature

    def reload_if_changed(self) -> bool:
        """Re-read the file if another process (`exoquic pair`, `trust add`,
        `trust remove`) changed it since it was last read; True if it changed."""
        if file_signature(self.path) == self._signature:
            return False
        self.reload()
        return True

    def list(self) -> list[TrustedPeer]:
        """Trusted peers, oldest first."""
        return sorted(self._peers.values(), key=lambda peer: (peer.added_at, peer.node_id))

    def get(self, node_id: str) -> TrustedPeer | None:
        return self._peers.get(parse_node_id(node_id))

    def is_trusted(self, public_key: bytes) -> bool:
        """Whether a peer presenting `public_key` may connect: its key is pinned,
        or it matches an id-only entry (the id is a hash of the key)."""
        peer = self._peers.get(_node_id(public_key))
        return peer is not None and peer.public_key in (None, public_key)

    def add(self, public_key: bytes, name: str, *, now: datetime | None = None) -> TrustedPeer:
        """Trust `public_key` under `name` (after pairing or an explicit `trust add`).

        Adding a trusted key again renames it. Raises TrustConflictError when
        another device already holds `name`.
        """
        node_id = _node_id(public_key)
        return self._change(node_id, name, public_key, now)

    def add_by_id(self, node_id: str, name: str, *, now: datetime | None = None) -> TrustedPeer:
        """Trust the device with `node_id` (as typed: it is parsed and checked)
        before its key is known; the key is pinned on first connection."""
        return self._change(parse_node_id(node_id), name, None, now)

    def pin_key(self, public_key: bytes) -> TrustedPeer:
        """Record the key of an id-only entry once a peer holding it has connected."""
        node_id = _node_id(public_key)
        with locked(self.path):
            self.reload()
            peer = self._peers.get(node_id)
            if peer is None or peer.public_key not in (None, public_key):
                raise TrustConflictError(f"{node_id} is not trusted with this key")
            if peer.public_key is None:
                peer = replace(peer, public_key=public_key)
                self._peers[node_id] = peer
                self._save()
        return peer

    def remove(self, node_id: str) -> TrustedPeer:
        """Stop trusting `node_id`; raises KeyError if it was not trusted."""
        canonical = parse_node_id(node_id)
        with locked(self.path):
            self.reload()
            peer = self._peers.pop(canonical, None)
            if peer is None:
                raise KeyError(f"{canonical} is not in the trust store")
            self._save()
        return peer

    def _change(
        self, node_id: str, name: str, public_key: bytes | None, now: datetime | None
    ) -> TrustedPeer:
        _check_name(name)
        with locked(self.path):
            self.reload()
            holder = self._holder_of(name)
            if holder is not None and holder.node_id != node_id:
                raise TrustConflictError(
                    f"refusing to trust {node_id} as {name!r}: that name belongs to "
                    f"{holder.node_id}, a different key. If the device really changed its "
                    f"key, run `exoquic trust remove {holder.node_id}` first."
                )
            old = self._peers.get(node_id)
            if old is not None and public_key is None:
                public_key = old.public_key  # adding by id never forgets a pinned key
            added_at = old.added_at if old is not None else (now or datetime.now(UTC))
            peer = TrustedPeer(node_id, name, public_key, added_at)
            self._peers[node_id] = peer
            self._save()
        return peer

    def _holder_of(self, name: str) -> TrustedPeer | None:
        wanted = name.casefold()
        return next((p for p in self._peers.values() if p.name.casefold() == wanted), None)

    def _save(self) -> None:
        document = {"version": FORMAT_VERSION, "peers": [_to_json(p) for p in self.list()]}
        text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
        write_private_file(self.path, text.encode(), replace=True)
        self._signature = file_signature(self.path)


def _node_id(public_key: bytes) -> str:
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an ed25519 public key has 32 bytes, not {len(public_key)}")
    return node_id_from_public_key(public_key)


def _check_name(name: str) -> None:
    if not is_valid_device_name(name):
        raise ValueError(
            f"a device name is 1-{MAX_NAME_LENGTH} printable characters "
            f"without surrounding spaces, not {name!r}"
        )


def _to_json(peer: TrustedPeer) -> dict[str, Any]:
    return {
        "node_id": peer.node_id,
        "name": peer.name,
        "public_key": peer.public_key.hex() if peer.public_key is not None else None,
        "added_at": peer.added_at.isoformat(),
    }


def _read(path: Path) -> dict[str, TrustedPeer]:
    try:
        if loose_permissions(path):
            raise TrustStoreError(
                f"trust store {path} is accessible by other users; "
                f"restrict it with `chmod 600 {path}`"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise TrustStoreError(f"cannot read trust store {path}: {exc}") from exc
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrustStoreError(
            f"trust store {path} is not valid JSON: {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}"
        ) from exc
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise TrustStoreError(f"trust store {path}: expected {{'version': 1, 'peers': [...]}}")
    entries = document.get("peers")
    if not isinstance(entries, list):
        raise TrustStoreError(f"trust store {path}: 'peers' must be a list")
    peers: dict[str, TrustedPeer] = {}
    for index, entry in enumerate(entries):
        try:
            peer = _from_json(entry)
        except (KeyError, TypeError, ValueError) as exc:
            raise TrustStoreError(
                f"trust store {path}: peer #{index + 1} is invalid: {exc}"
            ) from exc
        if peer.node_id in peers:
            raise TrustStoreError(f"trust store {path}: {peer.node_id} is listed twice")
        peers[peer.node_id] = peer
    return peers


def _from_json(entry: Any) -> TrustedPeer:
    if not isinstance(entry, dict) or set(entry) != {"node_id", "name", "public_key", "added_at"}:
        raise ValueError("expected an object with node_id, name, public_key and added_at")
    node_id, name, key_hex, added = (
        entry["node_id"],
        entry["name"],
        entry["public_key"],
        entry["added_at"],
    )
    if not all(isinstance(v, str) for v in (node_id, name, added)):
        raise TypeError("node_id, name and added_at must be strings")
    if key_hex is not None and not isinstance(key_hex, str):
        raise TypeError("public_key must be hex digits or null")
    node_id = parse_node_id(node_id)
    _check_name(name)
    public_key = bytes.fromhex(key_hex) if key_hex is not None else None
    if public_key is not None and _node_id(public_key) != node_id:
        raise NodeIdError(f"public key does not match node id {node_id}")
    added_at = datetime.fromisoformat(added)
    if added_at.tzinfo is None:
        raise ValueError("added_at needs a time zone")
    return TrustedPeer(node_id, name, public_key, added_at)
