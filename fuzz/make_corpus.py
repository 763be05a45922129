"""Write the small seed corpus in fuzz/corpus/ (run again after changing messages).

uv run python fuzz/make_corpus.py
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np

from exoquic.identity.pairing import PairingCode, PairingInitiator, PairingResponder
from exoquic.wire.framing import encode_frame
from exoquic.wire.messages import (
    ErrorMessage,
    Forward,
    Hello,
    Message,
    Ping,
    Pong,
    Release,
    TokenResult,
    encode_message,
)

CORPUS = Path(__file__).parent / "corpus"
NODE_ID = "exq-0000-0000-0000-0000-0"


def messages() -> list[Message]:
    return [
        Hello(1, NODE_ID, "laptop", {"memory": 1 << 34, "engines": ["mlx", "tinygrad"]}),
        Ping(7),
        Pong(7),
        ErrorMessage(0x206, "bad field"),
        Forward("req-1", 1, 0, np.array([1, 2, 3], np.int32), 0.7, 0.9, 40, 1234, 64),
        Forward("req-1", 1, 3, np.ones((2, 4), np.float16)),
        TokenResult("req-1", 42, "stop"),
        Release("req-1"),
    ]


def write(kind: str, data: bytes) -> None:
    folder = CORPUS / kind
    folder.mkdir(parents=True, exist_ok=True)
    (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)


def main() -> None:
    encoded = [encode_message(m) for m in messages()]
    encoded.append(encode_message(Forward("r", 1, 0, np.ones((1, 4), np.float32)), bfloat16=True))
    for data in encoded:
        write("messages", data)
        write("frames", b"\x00" * 4 + encode_frame(data))  # chunk-size bytes, then a frame
    write("frames", b"\x00" * 4 + b"".join(encode_frame(d) for d in encoded[:3]))
    write("frames", b"\x00" * 4 + struct.pack(">I", 1 << 20) + b"big")
    # Pairing inputs: scenario byte first (see fuzz_pairing.py), then payload choices.
    code = PairingCode("7K3M-9QX8", 1e9)
    initiator = PairingInitiator(code.text, bytes(range(32)), "init", tls_peer_key=None)
    responder = PairingResponder(code, bytes(range(1, 33)), "resp", tls_peer_key=None)
    request = initiator.start(0.0)
    response = responder.receive(request, 0.0) or b""
    for scenario, payload in enumerate([request, initiator.receive(response, 0.0) or b"",
                                        response, b"\xa0"]):  # fmt: skip
        write("pairing", bytes([scenario, 0, 0]) + payload)


if __name__ == "__main__":
    main()
