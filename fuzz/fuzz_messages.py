"""Fuzz message decoding: arbitrary frame payloads into `decode_message`.

    uv run python fuzz/fuzz_messages.py -atheris_runs=100000
    uv run python fuzz/fuzz_messages.py fuzz/corpus/messages -max_total_time=20

Only ProtocolError subclasses may escape decoding. Whatever decodes must
encode again, and that encoding must decode and re-encode to the same bytes.
"""

from __future__ import annotations

import sys

import atheris
import numpy  # noqa: F401  (imported first so that only exoquic gets instrumented)

with atheris.instrument_imports():
    from exoquic.wire.errors import ProtocolError
    from exoquic.wire.messages import decode_message, encode_message

MAX_TENSOR_ELEMENTS = 4096


def test_one_input(data: bytes) -> None:
    try:
        message = decode_message(data, max_tensor_elements=MAX_TENSOR_ELEMENTS)
    except ProtocolError:
        return
    try:
        encoded = encode_message(message)
    except ProtocolError as exc:
        raise AssertionError(f"a decoded message cannot be encoded: {exc}") from exc
    again = decode_message(encoded, max_tensor_elements=MAX_TENSOR_ELEMENTS)
    if encode_message(again) != encoded:
        raise AssertionError("message encoding does not round-trip")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
