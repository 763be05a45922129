"""Fuzz FrameDecoder + strict CBOR: arbitrary bytes, split at arbitrary points.

    uv run python fuzz/fuzz_frames.py -atheris_runs=100000
    uv run python fuzz/fuzz_frames.py fuzz/corpus/frames -max_total_time=20

The only exceptions allowed out are ProtocolError subclasses; anything else
(or a frame over the limit, or lost bytes) is a crash.
"""

from __future__ import annotations

import sys

import atheris
import numpy  # noqa: F401  (imported first so that only exoquic gets instrumented)

with atheris.instrument_imports():
    from exoquic.wire import cbor
    from exoquic.wire.errors import ProtocolError
    from exoquic.wire.framing import HEADER_SIZE, FrameDecoder

MAX_FRAME_SIZE = 1024


def test_one_input(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    chunk_sizes = [provider.ConsumeIntInRange(1, 64) for _ in range(4)]
    stream = provider.ConsumeBytes(provider.remaining_bytes())
    decoder = FrameDecoder(MAX_FRAME_SIZE)
    consumed = 0
    try:
        position, turn = 0, 0
        while position < len(stream):
            size = chunk_sizes[turn % len(chunk_sizes)]
            decoder.feed(stream[position : position + size])
            position, turn = position + size, turn + 1
            while (frame := decoder.next_frame()) is not None:
                if len(frame) > MAX_FRAME_SIZE:
                    raise AssertionError("frame over the limit came out")
                consumed += HEADER_SIZE + len(frame)
                _decode(frame)
        if consumed + decoder.buffered != len(stream):
            raise AssertionError("bytes were lost or invented")
        decoder.end_of_stream()
    except ProtocolError:
        pass


def _decode(frame: bytes) -> None:
    try:
        value = cbor.loads(frame)
    except ProtocolError:
        return
    try:
        canonical = cbor.dumps(value)
    except ProtocolError as exc:
        raise AssertionError(f"a decoded value cannot be encoded: {exc}") from exc
    if cbor.dumps(cbor.loads(canonical)) != canonical:  # bytes, because NaN != NaN
        raise AssertionError("canonical encoding does not round-trip")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
