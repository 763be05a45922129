"""Fuzz announcement decoding: `decode_and_verify` and the PeerTable behind it.

    uv run python fuzz/fuzz_announcement.py -atheris_runs=100000
    uv run python fuzz/fuzz_announcement.py fuzz/corpus/announcement -max_total_time=20

The first byte picks what the rest is: (even) a raw datagram, or (odd) a body
that the harness signs with a fixed key, so the fuzzer also reaches the body
checks behind the signature. Only AnnouncementError subclasses may escape
`decode_and_verify`; the table never raises; whatever decodes re-encodes to an
announcement that decodes to the same fields.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from exoquic.discovery.announcement import (
        PROTOCOL_VERSION,
        AnnouncementError,
        decode_and_verify,
        encode_announcement,
        signed_bytes,
    )
    from exoquic.discovery.peer_table import PeerTable
    from exoquic.identity.keys import Identity
    from exoquic.wire import cbor

KEY = Identity.from_private_key(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


class TrustAll:
    def is_trusted(self, public_key: bytes) -> bool:
        return True


def seal(body: bytes) -> bytes:
    """A correctly signed envelope around arbitrary body bytes."""
    signature = KEY.sign(signed_bytes(PROTOCOL_VERSION, KEY.public_key, body))
    return cbor.dumps([PROTOCOL_VERSION, KEY.public_key, body, signature])


def test_one_input(data: bytes) -> None:
    if not data:
        return
    payload = data[1:]
    datagram = seal(payload) if data[0] % 2 else payload
    try:
        announcement = decode_and_verify(datagram)
    except AnnouncementError:
        announcement = None
    table = PeerTable(TrustAll())
    table.receive(datagram, "198.18.0.2", now=0.0)
    table.receive(datagram, "198.18.0.2", now=1.0)  # a replay: must change nothing
    table.expire(now=100.0)
    if announcement is None or announcement.public_key != KEY.public_key:
        return
    again = decode_and_verify(
        encode_announcement(
            KEY,
            name=announcement.name,
            port=announcement.port,
            addresses=announcement.addresses,
            capabilities=announcement.capabilities,
            start_time=announcement.start_time,
            instance_id=announcement.instance_id,
            sequence=announcement.sequence,
        )
    )
    if again != announcement or dict(again.capabilities) != dict(announcement.capabilities):
        raise AssertionError("a decoded announcement does not survive re-encoding")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
