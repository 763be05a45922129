"""Fuzz the pairing state machines with hostile payloads at every step.

    uv run python fuzz/fuzz_pairing.py -atheris_runs=2000
    uv run python fuzz/fuzz_pairing.py fuzz/corpus/pairing -max_total_time=20

Each input picks a side and how far the honest conversation got, then feeds
fuzzed payloads (raw bytes, or pairing messages with fuzzed SPAKE2 and
confirmation bytes). Only ProtocolError subclasses may escape, and fuzzed
input must never complete a pairing (it cannot know the code's key).
SPAKE2 is pure Python, so this runs at tens of inputs per second.
"""

from __future__ import annotations

import sys

import atheris
import numpy  # noqa: F401  (imported first so that only exoquic gets instrumented)
import spake2  # noqa: F401  (instrumented pure-Python ed25519 would crawl)

with atheris.instrument_imports():
    from exoquic.pairing.protocol import PairingCode, PairingInitiator, PairingResponder
    from exoquic.wire.errors import ProtocolError
    from exoquic.wire.messages import PairConfirm, PairFinish, PairResponse, encode_message

NOW = 100.0
CODE = "7K3M-9QX8"  # a valid code (its check symbol matches)
INITIATOR_KEY, RESPONDER_KEY = bytes(range(32)), bytes(range(1, 33))


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    scenario = provider.ConsumeIntInRange(0, 3)
    initiator = PairingInitiator(CODE, INITIATOR_KEY, "init", tls_peer_key=RESPONDER_KEY)
    responder = PairingResponder(
        PairingCode(CODE, NOW + 120), RESPONDER_KEY, "resp", tls_peer_key=INITIATOR_KEY
    )
    request = initiator.start(NOW)
    target: PairingInitiator | PairingResponder = responder
    if scenario == 1:  # responder waiting for PairFinish
        responder.receive(request, NOW)
    elif scenario == 2:  # initiator waiting for PairResponse
        target = initiator
    elif scenario == 3:  # initiator waiting for PairConfirm
        response = responder.receive(request, NOW)
        assert response is not None
        initiator.receive(response, NOW)
        target = initiator
    for _ in range(provider.ConsumeIntInRange(1, 3)):
        try:
            target.receive(_payload(provider), NOW + provider.ConsumeIntInRange(0, 200))
        except ProtocolError:
            break
    if target.result is not None:
        raise AssertionError("fuzzed input completed a pairing")


def _payload(provider: atheris.FuzzedDataProvider) -> bytes:
    kind = provider.ConsumeIntInRange(0, 3)
    spake = provider.ConsumeBytes(1) + provider.ConsumeBytes(32)
    if kind == 1 and len(spake) == 33:
        return encode_message(PairFinish(spake, provider.ConsumeBytes(32).ljust(32, b"\0")))
    if kind == 2 and len(spake) == 33:
        return encode_message(PairResponse(RESPONDER_KEY, "resp", spake))
    if kind == 3:
        return encode_message(PairConfirm(provider.ConsumeBytes(32).ljust(32, b"\0")))
    return provider.ConsumeBytes(provider.ConsumeIntInRange(0, 256))


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
