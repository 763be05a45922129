"""Fuzz strict CBOR decoding with small item caps, so the item count that runs
before cbor2 sees the bytes is exercised on every input.

    uv run python fuzz/fuzz_cbor.py -atheris_runs=100000
    uv run python fuzz/fuzz_cbor.py fuzz/corpus/messages -max_total_time=20

The first byte is the cap. Only RemoteProtocolError may escape decoding;
whatever decodes holds at most `cap` items and encodes again.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from exoquic.wire import cbor
    from exoquic.wire.errors import RemoteProtocolError


def test_one_input(data: bytes) -> None:
    if not data:
        return
    cap, payload = data[0], data[1:]
    try:
        value = cbor.loads(payload, max_items=cap)
    except RemoteProtocolError:
        return
    if cbor.count_items(value, cap) > cap:
        raise AssertionError(f"decoded a value of more than {cap} items")
    cbor.dumps(value)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
