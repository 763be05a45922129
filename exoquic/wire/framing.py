"""Length-prefixed frames on a byte stream: `u32 big-endian length | payload`.

Sans-IO, in the style of h11: the transport `feed`s whatever bytes a QUIC
stream delivered and takes out whole frames with `next_frame`. A length prefix
over `max_frame_size` is refused as soon as its four bytes arrive, before any
of the payload is buffered.
"""

from __future__ import annotations

import struct

from exoquic.wire.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

MAX_FRAME_SIZE = 64 << 20
"""Default cap on one frame's payload (64 MiB: a long prefill's hidden state)."""

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size


def frame_header(length: int, *, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """The 4-byte prefix of a `length`-byte payload.

    Sending `frame_header(len(payload))` and then `payload` as two writes
    avoids copying a large payload (a tensor) into one buffer.
    """
    if not 0 <= length <= max_frame_size:
        raise LocalProtocolError(
            f"frame of {length} bytes is over the {max_frame_size}-byte limit",
            ErrorCode.FRAME_TOO_LARGE,
        )
    return _HEADER.pack(length)


def encode_frame(payload: bytes, *, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """`payload` with its length prefix, as one bytes object."""
    return frame_header(len(payload), max_frame_size=max_frame_size) + payload


class FrameDecoder:
    """Splits a byte stream into frame payloads.

    Raises RemoteProtocolError for an oversized length prefix (FRAME_TOO_LARGE)
    or a stream that ends inside a frame (MALFORMED_FRAME). After an error the
    decoder stays broken and raises the same error again.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        if not 0 <= max_frame_size < 1 << 32:
            raise ValueError("max_frame_size must fit in the u32 length prefix")
        self.max_frame_size = max_frame_size
        self._buffer = bytearray()
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        """Add bytes received from the stream."""
        self._raise_if_broken()
        self._buffer += data
        self._check_next_length()

    def next_frame(self) -> bytes | None:
        """The next whole frame's payload, or None until more bytes arrive."""
        self._raise_if_broken()
        length = self._check_next_length()
        if length is None or len(self._buffer) < HEADER_SIZE + length:
            return None
        with memoryview(self._buffer) as view:  # one copy, not slice-then-bytes
            payload = bytes(view[HEADER_SIZE : HEADER_SIZE + length])
        del self._buffer[: HEADER_SIZE + length]
        return payload

    def end_of_stream(self) -> None:
        """The stream ended: raise unless it ended between frames."""
        self._raise_if_broken()
        if self._buffer:
            self._fail(
                f"stream ended inside a frame ({len(self._buffer)} bytes left over)",
                ErrorCode.MALFORMED_FRAME,
            )

    def _check_next_length(self) -> int | None:
        if len(self._buffer) < HEADER_SIZE:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        if length > self.max_frame_size:
            self._fail(
                f"peer announced a {length}-byte frame, over the {self.max_frame_size}-byte limit",
                ErrorCode.FRAME_TOO_LARGE,
            )
        return int(length)

    def _fail(self, message: str, code: ErrorCode) -> None:
        self._error = RemoteProtocolError(message, code)
        self._buffer = bytearray()  # the rest of the stream is meaningless now
        raise self._error

    def _raise_if_broken(self) -> None:
        if self._error is not None:
            raise RemoteProtocolError(str(self._error), self._error.error_code)
