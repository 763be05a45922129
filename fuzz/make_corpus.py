"""Write the seed corpus in fuzz/corpus/ (run again after changing messages).

    uv run python fuzz/make_corpus.py [CORPUS_DIR]

Message seeds come from the registry: every registered message type needs an
entry in `EXAMPLES` (tests/wire/message_examples.py, shared with the round-trip
tests), or this script stops and names the missing type (and
tests/wire/test_fuzz_corpus.py fails), so a new message always gets seeds.
The messages/ and frames/ folders are rewritten from scratch, so seeds of
retired message versions do not linger. Pairing seeds hold random SPAKE2
values: they are written only into an empty pairing/ folder, so that reruns
do not pile up new random files.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exoquic.discovery.announcement import encode_announcement
from exoquic.identity.keys import Identity
from exoquic.pairing.protocol import PairingCode, PairingInitiator, PairingResponder
from exoquic.wire import cbor
from exoquic.wire.framing import encode_frame
from exoquic.wire.messages import MESSAGE_TYPES, Forward, Message, encode_message

CORPUS = Path(__file__).parent / "corpus"
# The example messages are shared with the round-trip tests (tests/ is no package).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from wire.message_examples import EXAMPLES, NODE_ID  # noqa: E402


class MissingExampleError(Exception):
    """A registered message type has no entry in EXAMPLES."""


def protocol_types() -> list[str]:
    """The registered message types of the protocol (tests register toy types
    of their own, which need no seeds)."""
    return sorted(t for t, cls in MESSAGE_TYPES.items() if cls.__module__.startswith("exoquic."))


def message_seeds(examples: dict[str, list[Message]] = EXAMPLES) -> list[bytes]:
    """Encoded seeds for every registered message type, in registry order."""
    missing = [t for t in protocol_types() if t not in examples]
    if missing:
        raise MissingExampleError(
            f"no seed example for message type(s) {missing}: "
            "add them to EXAMPLES in tests/wire/message_examples.py"
        )
    seeds = []
    for type_name in protocol_types():
        for message in examples[type_name]:
            if type(message) is not MESSAGE_TYPES[type_name]:
                raise MissingExampleError(f"EXAMPLES[{type_name!r}] holds a {message!r}")
            seeds.append(encode_message(message))
    hidden = np.ones((1, 4), np.float32)
    seeds.append(encode_message(Forward("r", 1, 0, hidden, NODE_ID), bfloat16=True))
    return seeds


def seed_name(data: bytes) -> str:
    """Seeds are named by content, so equal seeds are one file."""
    return hashlib.sha1(data).hexdigest()


def write(folder: Path, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / seed_name(data)).write_bytes(data)


def write_messages_and_frames(corpus: Path) -> None:
    encoded = message_seeds()
    for kind in ("messages", "frames"):
        shutil.rmtree(corpus / kind, ignore_errors=True)
    for data in encoded:
        write(corpus / "messages", data)
        # fuzz_frames reads 4 chunk-size bytes, then the stream.
        write(corpus / "frames", b"\x00" * 4 + encode_frame(data))
    write(corpus / "frames", b"\x00" * 4 + b"".join(encode_frame(d) for d in encoded[:3]))
    write(corpus / "frames", b"\x00" * 4 + struct.pack(">I", 1 << 20) + b"big")


def write_pairing(corpus: Path) -> None:
    """Scenario byte first (see fuzz_pairing.py), then payload choices."""
    folder = corpus / "pairing"
    if folder.is_dir() and any(folder.iterdir()):
        return
    code = PairingCode("7K3M-9QX8", 1e9)
    initiator = PairingInitiator(code.text, bytes(range(32)), "init", tls_peer_key=None)
    responder = PairingResponder(code, bytes(range(1, 33)), "resp", tls_peer_key=None)
    request = initiator.start(0.0)
    response = responder.receive(request, 0.0) or b""
    for scenario, payload in enumerate([request, initiator.receive(response, 0.0) or b"",
                                        response, b"\xa0"]):  # fmt: skip
        write(folder, bytes([scenario, 0, 0]) + payload)


def write_announcement(corpus: Path) -> None:
    """One valid datagram (first byte even) and its body (first byte odd, which
    fuzz_announcement.py signs with the same fixed key)."""
    key = Identity.from_private_key(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    datagram = encode_announcement(
        key,
        name="studio",
        port=52417,
        addresses=["198.18.0.2", "fe80::1"],
        capabilities={"chip": "Apple M2", "engine": "mlx", "total_memory": 16 << 30},
        start_time=1_800_000_000_000_000,
        instance_id=bytes(16),
        sequence=7,
    )
    folder = corpus / "announcement"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "valid_datagram").write_bytes(b"\x00" + datagram)
    (folder / "valid_body").write_bytes(b"\x01" + cbor.loads(datagram)[2])


def main(corpus: Path = CORPUS) -> None:
    """Write the messages/, frames/, pairing/ and announcement/ seeds under `corpus`."""
    write_messages_and_frames(corpus)
    write_pairing(corpus)
    write_announcement(corpus)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else CORPUS)
