"""Announcement encoding and verification: pure, no sockets."""

from __future__ import annotations

import random
from pathlib import Path

import cbor2
import pytest

from exoquic.discovery.announcement import (
    MAX_ANNOUNCEMENT_SIZE,
    PROTOCOL_VERSION,
    AnnouncementTooLarge,
    BadSignature,
    MalformedAnnouncement,
    UnsupportedVersion,
    decode_and_verify,
    encode_announcement,
    open_envelope,
    signed_bytes,
    verify,
)
from exoquic.identity.keys import Identity

V = PROTOCOL_VERSION
CAPS = {"total_memory": 16 << 30, "available_memory": 8 << 30, "chip": "Apple M2", "engine": "mlx"}


def announce(identity: Identity, **overrides: object) -> bytes:
    fields: dict[str, object] = {
        "name": "studio",
        "port": 52417,
        "addresses": ["198.18.0.2", "fe80::1"],
        "capabilities": CAPS,
        "start_time": 1_800_000_000_000_000,
        "instance_id": bytes(16),
        "sequence": 7,
    }
    fields.update(overrides)
    return encode_announcement(identity, **fields)  # type: ignore[arg-type]


def seal(identity: Identity, body: object, version: int = PROTOCOL_VERSION) -> bytes:
    """A correctly signed envelope around any body (to test the body checks)."""
    body_bytes = cbor2.dumps(body, canonical=True)
    signature = identity.sign(signed_bytes(version, identity.public_key, body_bytes))
    return cbor2.dumps([version, identity.public_key, body_bytes, signature])


def valid_body(identity: Identity) -> dict[str, object]:
    return {
        "id": identity.node_id,
        "name": "n",
        "port": 1,
        "addrs": [],
        "caps": {},
        "start": 0,
        "inst": bytes(16),
        "seq": 0,
    }


def test_roundtrip_keeps_every_field() -> None:
    identity = Identity.generate()
    ann = decode_and_verify(announce(identity))
    assert ann.public_key == identity.public_key
    assert ann.node_id == identity.node_id
    assert (ann.name, ann.port, ann.sequence) == ("studio", 52417, 7)
    assert ann.addresses == ("198.18.0.2", "fe80::1")
    assert dict(ann.capabilities) == CAPS
    assert ann.instance_id == bytes(16)
    assert ann.start_time == 1_800_000_000_000_000
    assert ann.version == PROTOCOL_VERSION


def test_encoding_is_deterministic_and_fits_one_datagram() -> None:
    identity = Identity.generate()
    assert announce(identity) == announce(identity)  # ed25519 and canonical CBOR
    assert len(announce(identity)) < MAX_ANNOUNCEMENT_SIZE


def test_any_flipped_bit_is_rejected() -> None:
    data = bytearray(announce(Identity.generate()))
    for index in range(len(data)):
        forged = bytearray(data)
        forged[index] ^= 0x01
        with pytest.raises((BadSignature, MalformedAnnouncement, UnsupportedVersion)):
            decode_and_verify(bytes(forged))


def test_signature_by_another_key_is_rejected() -> None:
    victim, attacker = Identity.generate(), Identity.generate()
    version, _key, body, signature = cbor2.loads(announce(attacker))
    forged = cbor2.dumps([version, victim.public_key, body, signature])
    with pytest.raises(BadSignature):
        decode_and_verify(forged)


def test_node_id_must_belong_to_the_signing_key() -> None:
    victim, attacker = Identity.generate(), Identity.generate()
    body = valid_body(attacker) | {"id": victim.node_id}
    with pytest.raises(MalformedAnnouncement, match="not the id of the signing key"):
        decode_and_verify(seal(attacker, body))


@pytest.mark.parametrize("version", [1, PROTOCOL_VERSION + 1])
def test_other_versions_are_refused_cleanly(version: int) -> None:
    identity = Identity.generate()
    with pytest.raises(UnsupportedVersion):
        decode_and_verify(seal(identity, valid_body(identity), version=version))


def test_size_cap_is_checked_before_decoding() -> None:
    with pytest.raises(AnnouncementTooLarge):
        decode_and_verify(b"\x00" * (MAX_ANNOUNCEMENT_SIZE + 1))
    with pytest.raises(ValueError, match="byte limit"):
        announce(Identity.generate(), capabilities={"blob": "x" * MAX_ANNOUNCEMENT_SIZE})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "invalid CBOR"),
        (b"\x9f\x01\xff", "invalid CBOR"),  # indefinite-length array
        (cbor2.dumps([1, 2, 3, 4]) + b"\x00", "after the CBOR item"),
        (cbor2.dumps({"a": 1}), "expected an array"),
        (cbor2.dumps([True, bytes(32), b"", bytes(64)]), "version must be an integer"),
        (cbor2.dumps([V, bytes(31), b"", bytes(64)]), "public key must be 32 bytes"),
        (cbor2.dumps([V, bytes(32), "text", bytes(64)]), "body must be a byte string"),
    ],
)
def test_malformed_envelopes(data: bytes, message: str) -> None:
    with pytest.raises(MalformedAnnouncement, match=message):
        decode_and_verify(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"port": 0}, "port 0 is outside"),
        ({"port": True}, "'port' must be int"),
        ({"name": ""}, "name must be"),
        ({"name": "a\nb"}, "name must be"),
        ({"addrs": ["not-an-ip"]}, "is not an IP address"),
        ({"addrs": ["10.0.0.1"] * 17}, "more than 16 addresses"),
        ({"inst": bytes(15)}, "inst must be 16 bytes"),
        ({"seq": -1}, "seq -1 is outside"),
        ({"start": -1}, "start -1 is outside"),
        ({"start": 1.5}, "'start' must be int"),
        ({"caps": {1: "x"}}, "map key must be a text string"),
        ({"caps": {"a": {"b": {"c": {"d": 1}}}}}, "nest deeper"),
        ({"caps": {"when": cbor2.CBORTag(1, 0)}}, "invalid CBOR"),
        ({"caps": {"big": cbor2.CBORTag(2, b"\x01" * 9)}}, "invalid CBOR"),
    ],
)
def test_body_fields_are_checked(change: dict[str, object], message: str) -> None:
    identity = Identity.generate()
    with pytest.raises(MalformedAnnouncement, match=message):
        decode_and_verify(seal(identity, valid_body(identity) | change))


@pytest.mark.parametrize("key", ["seq", "start"])
def test_missing_field_is_named(key: str) -> None:
    identity = Identity.generate()
    body = valid_body(identity)
    del body[key]
    with pytest.raises(MalformedAnnouncement, match=f"no '{key}'"):
        decode_and_verify(seal(identity, body))


def test_open_envelope_checks_no_signature_and_verify_does() -> None:
    identity = Identity.generate()
    version, key, body, _signature = cbor2.loads(announce(identity))
    forged = cbor2.dumps([version, key, body, bytes(64)])
    envelope = open_envelope(forged)  # cheap: the shape is fine
    assert (envelope.public_key, envelope.body) == (identity.public_key, body)
    with pytest.raises(BadSignature):
        verify(envelope)
    assert verify(open_envelope(announce(identity))).node_id == identity.node_id


def test_unknown_body_fields_are_ignored() -> None:
    identity = Identity.generate()
    ann = decode_and_verify(seal(identity, valid_body(identity) | {"future": [1, 2]}))
    assert ann.node_id == identity.node_id


def test_random_bytes_only_raise_documented_errors() -> None:
    rng = random.Random(0)
    for size in range(0, 300, 7):
        data = rng.randbytes(size)
        with pytest.raises((MalformedAnnouncement, UnsupportedVersion, BadSignature)):
            decode_and_verify(data)


def test_encoder_refuses_what_receivers_would_drop() -> None:
    identity = Identity.generate()
    with pytest.raises(ValueError, match="port 0 is outside"):
        announce(identity, port=0)
    with pytest.raises(ValueError, match="cannot encode"):
        announce(identity, capabilities={"huge": 1 << 70})


def test_fuzz_seeds_are_valid_announcements_of_this_version() -> None:
    seeds = Path(__file__).parents[2] / "fuzz" / "corpus" / "announcement"
    datagram = (seeds / "valid_datagram").read_bytes()[1:]
    body = (seeds / "valid_body").read_bytes()[1:]
    assert decode_and_verify(datagram).version == PROTOCOL_VERSION, (
        "re-run: uv run python fuzz/make_corpus.py"
    )
    assert cbor2.loads(datagram)[2] == body
