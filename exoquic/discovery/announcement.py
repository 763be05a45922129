"""Signed discovery announcements (sans-IO: bytes in, values out).

One UDP datagram holds one announcement, a CBOR array of four items:

    [version, public_key, body, signature]

- `version` (int): the protocol version, `PROTOCOL_VERSION`.
- `public_key` (32-byte bstr): the sender's raw ed25519 key.
- `body` (bstr): the canonical CBOR encoding of a map (fields below).
- `signature` (64-byte bstr): ed25519 over
  `b"exoquic announcement v<version>\\0" + public_key + body`.

The signature is checked over those exact bytes before the body is decoded,
so nothing the sender wrote is interpreted until we know who wrote it. The
label makes a signature on anything else (a TLS handshake, a pairing message,
another version) useless here.

Body fields (text keys; unknown keys are ignored so that a later release can
add optional fields without a new version):

- `id`: the sender's node id; must be the id of `public_key`.
- `name`: display name, 1-64 printable characters.
- `port`: the sender's QUIC port.
- `addrs`: IP addresses the sender can be reached at (may be empty: then the
  datagram's source address is all we have).
- `caps`: the capability summary (`DeviceCapabilities.to_dict()`), plain data.
- `start`: when this instance started, in microseconds since the Unix epoch;
  strictly greater than the start of any earlier instance in the same process.
- `inst`: 16 random bytes chosen at process start (the instance id).
- `seq`: a counter that grows with every announcement of this instance.

The receiver orders a node's announcements by (`start`, `seq`) to reject
replays, also of runs it never saw; see `PeerTable`.

`open_envelope` checks the envelope without the signature (cheap), so that a
receiver can drop keys it does not trust before spending a signature check;
`verify` then checks the signature and the body.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from exoquic.identity.keys import Identity, verify_signature
from exoquic.identity.node_id import node_id_from_public_key
from exoquic.wire import cbor
from exoquic.wire.errors import LocalProtocolError, RemoteProtocolError

PROTOCOL_VERSION = 2  # 2: the body carries `start`
# One unfragmented datagram on any IPv6 path (minimum MTU 1280 minus headers).
MAX_ANNOUNCEMENT_SIZE = 1200
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
INSTANCE_ID_SIZE = 16
MAX_NAME_LENGTH = 64
MAX_ADDRESSES = 16
MAX_SEQUENCE = 2**64 - 1
MAX_START_TIME = 2**64 - 1
MAX_CAPABILITY_DEPTH = 4
# The envelope and body are at most this deep (caps included), so decoding
# can never recurse far on hostile input.
_MAX_CBOR_DEPTH = MAX_CAPABILITY_DEPTH + 2


class AnnouncementError(ValueError):
    """A received datagram is not an acceptable announcement (the sender's fault)."""


class AnnouncementTooLarge(AnnouncementError):
    """The datagram is larger than `MAX_ANNOUNCEMENT_SIZE`."""


class MalformedAnnouncement(AnnouncementError):
    """Not valid strict CBOR, or a field is missing, mistyped or out of range."""


class UnsupportedVersion(AnnouncementError):
    """A well-formed envelope of a protocol version this node does not speak."""


class BadSignature(AnnouncementError):
    """The signature does not verify against the announced key."""


@dataclass(frozen=True)
class Announcement:
    """A verified announcement: every field was signed by `public_key`."""

    public_key: bytes
    node_id: str
    name: str
    port: int
    addresses: tuple[str, ...]
    capabilities: Mapping[str, Any] = field(hash=False)
    start_time: int
    instance_id: bytes
    sequence: int
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Envelope:
    """A datagram's outer array, well formed but not yet verified: nothing in
    `body` may be believed before `verify` checks `signature`."""

    version: int
    public_key: bytes
    body: bytes
    signature: bytes


def encode_announcement(
    identity: Identity,
    *,
    name: str,
    port: int,
    addresses: Sequence[str],
    capabilities: Mapping[str, Any],
    start_time: int,
    instance_id: bytes,
    sequence: int,
) -> bytes:
    """The signed datagram announcing `identity` (raises ValueError on bad arguments,
    including an announcement that would not fit `MAX_ANNOUNCEMENT_SIZE`)."""
    body = {
        "id": identity.node_id,
        "name": name,
        "port": port,
        "addrs": list(addresses),
        "caps": dict(capabilities),
        "start": start_time,
        "inst": instance_id,
        "seq": sequence,
    }
    # Validate with the receiver's own rules, so we never send what peers drop.
    _parse_body(body, identity.public_key)
    try:
        body_bytes = cbor.dumps(body)  # canonical: the bytes we sign are well defined
    except LocalProtocolError as exc:
        raise ValueError(f"cannot encode announcement: {exc}") from None
    signature = identity.sign(signed_bytes(PROTOCOL_VERSION, identity.public_key, body_bytes))
    data = cbor.dumps([PROTOCOL_VERSION, identity.public_key, body_bytes, signature])
    if len(data) > MAX_ANNOUNCEMENT_SIZE:
        raise ValueError(
            f"announcement is {len(data)} bytes, over the {MAX_ANNOUNCEMENT_SIZE} byte limit: "
            "shorten the name, the address list or the capabilities"
        )
    return data


def signed_bytes(version: int, public_key: bytes, body: bytes) -> bytes:
    """Exactly the bytes the signature covers."""
    return f"exoquic announcement v{version}\0".encode() + public_key + body


def decode_and_verify(data: bytes) -> Announcement:
    """Decode a received datagram and check its signature: `verify(open_envelope(data))`.

    Raises only `AnnouncementError` subclasses: `AnnouncementTooLarge`,
    `MalformedAnnouncement`, `UnsupportedVersion` or `BadSignature`. Says
    nothing about trust: the caller checks `public_key` against its trust store.
    """
    return verify(open_envelope(data))


def open_envelope(data: bytes) -> Envelope:
    """The datagram's envelope, checked for shape but not for its signature.

    Costs a bounded CBOR decode (microseconds), no public-key operation.
    Raises `AnnouncementTooLarge`, `MalformedAnnouncement` or `UnsupportedVersion`.
    """
    if len(data) > MAX_ANNOUNCEMENT_SIZE:
        raise AnnouncementTooLarge(
            f"announcement of {len(data)} bytes exceeds {MAX_ANNOUNCEMENT_SIZE}"
        )
    envelope = _strict_loads(data)
    if not isinstance(envelope, list) or len(envelope) != 4:
        raise MalformedAnnouncement("expected an array [version, key, body, signature]")
    version, public_key, body_bytes, signature = envelope
    if type(version) is not int:
        raise MalformedAnnouncement("version must be an integer")
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"announcement version {version}, this node speaks {PROTOCOL_VERSION}"
        )
    _check_bytes("public key", public_key, PUBLIC_KEY_SIZE)
    _check_bytes("signature", signature, SIGNATURE_SIZE)
    if not isinstance(body_bytes, bytes):
        raise MalformedAnnouncement("body must be a byte string")
    return Envelope(version, public_key, body_bytes, signature)


def verify(envelope: Envelope) -> Announcement:
    """Check the envelope's signature, then decode and check its body.

    Raises `BadSignature` or `MalformedAnnouncement`.
    """
    signed = signed_bytes(envelope.version, envelope.public_key, envelope.body)
    if not verify_signature(envelope.public_key, envelope.signature, signed):
        raise BadSignature("announcement signature does not verify")
    return _parse_body(_strict_loads(envelope.body), envelope.public_key)


def _strict_loads(data: bytes) -> Any:
    """Strict CBOR (see `wire.cbor`): plain data only, no tags, no trailing bytes."""
    try:
        return cbor.loads(data, max_depth=_MAX_CBOR_DEPTH)
    except RemoteProtocolError as exc:
        raise MalformedAnnouncement(str(exc)) from None


def _parse_body(body: Any, public_key: bytes) -> Announcement:
    if not isinstance(body, dict):
        raise MalformedAnnouncement("body must be a map")
    node_id = _field(body, "id", str)
    if node_id != node_id_from_public_key(public_key):
        raise MalformedAnnouncement(f"node id {node_id!r} is not the id of the signing key")
    return Announcement(
        public_key=public_key,
        node_id=node_id,
        name=_check_name(_field(body, "name", str)),
        port=_check_range("port", _field(body, "port", int), 1, 65535),
        addresses=_check_addresses(_field(body, "addrs", list)),
        capabilities=_check_capabilities(_field(body, "caps", dict)),
        start_time=_check_range("start", _field(body, "start", int), 0, MAX_START_TIME),
        instance_id=_check_bytes("inst", _field(body, "inst", bytes), INSTANCE_ID_SIZE),
        sequence=_check_range("seq", _field(body, "seq", int), 0, MAX_SEQUENCE),
    )


def _field(body: dict[Any, Any], key: str, kind: type) -> Any:
    if key not in body:
        raise MalformedAnnouncement(f"body has no {key!r}")
    value = body[key]
    # `type(...) is` because bool is an int subclass and must not pass as a port.
    if type(value) is not kind:
        raise MalformedAnnouncement(f"{key!r} must be {kind.__name__}, not {type(value).__name__}")
    return value


def _check_bytes(what: str, value: Any, size: int) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise MalformedAnnouncement(f"{what} must be {size} bytes")
    return value


def _check_range(what: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise MalformedAnnouncement(f"{what} {value} is outside {low}..{high}")
    return value


def _check_name(name: str) -> str:
    if not 0 < len(name) <= MAX_NAME_LENGTH or not name.isprintable():
        raise MalformedAnnouncement(f"name must be 1-{MAX_NAME_LENGTH} printable characters")
    return name


def _check_addresses(addresses: list[Any]) -> tuple[str, ...]:
    if len(addresses) > MAX_ADDRESSES:
        raise MalformedAnnouncement(f"more than {MAX_ADDRESSES} addresses")
    checked = []
    for address in addresses:
        if not isinstance(address, str):
            raise MalformedAnnouncement("addresses must be strings")
        try:
            checked.append(str(ipaddress.ip_address(address)))
        except ValueError:
            raise MalformedAnnouncement(f"{address!r} is not an IP address") from None
    return tuple(checked)


def _check_capabilities(caps: dict[Any, Any]) -> Mapping[str, Any]:
    _check_plain(caps, depth=1)
    return MappingProxyType(caps)


def _check_plain(value: Any, depth: int) -> None:
    """Capabilities are JSON-like data: maps with text keys, arrays, scalars."""
    if depth > MAX_CAPABILITY_DEPTH:
        raise MalformedAnnouncement(f"capabilities nest deeper than {MAX_CAPABILITY_DEPTH}")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise MalformedAnnouncement("capability keys must be strings")
            _check_plain(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_plain(item, depth + 1)
    elif value is not None and type(value) not in (str, int, float, bool):
        raise MalformedAnnouncement(f"capability value of type {type(value).__name__}")
