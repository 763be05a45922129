"""Wire messages over a QUIC stream: one length-prefixed CBOR frame per message."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from exoquic.transport.connection import Connection
from exoquic.transport.stream import SEND_CHUNK, QuicStream
from exoquic.wire.errors import RemoteProtocolError
from exoquic.wire.framing import FrameDecoder, frame_header
from exoquic.wire.messages import Message, decode_message, encode_message


class MessageStream:
    """Sends and receives `exoquic.wire` messages on one stream.

    A frame whose length prefix is over `max_frame_size` is refused before
    its payload is buffered. Any protocol violation by the peer (oversized or
    truncated frame, invalid CBOR or message) closes the whole connection
    with the wire error code and raises `RemoteProtocolError`; other
    connections are not affected.
    """

    def __init__(self, stream: QuicStream, *, max_frame_size: int | None = None) -> None:
        self.stream = stream
        self.max_frame_size = max_frame_size or stream.connection.config.max_frame_size
        self._decoder = FrameDecoder(self.max_frame_size)

    @classmethod
    async def open(cls, connection: Connection) -> MessageStream:
        """Open a new stream on `connection` for messages."""
        return cls(await connection.open_stream())

    @property
    def connection(self) -> Connection:
        return self.stream.connection

    @contextmanager
    def frame_limit(self, max_frame_size: int) -> Iterator[None]:
        """Receive with a lower frame cap for a while (say, for a handshake
        message whose type bounds its size), so that a larger length prefix is
        refused before the payload is buffered."""
        decoder = self._decoder
        previous = decoder.max_frame_size
        decoder.max_frame_size = min(previous, max_frame_size)
        try:
            yield
        finally:
            decoder.max_frame_size = previous

    async def send_message(self, message: Message, *, bfloat16: bool = False) -> None:
        """Encode and send one message (waits while the stream's send buffer is full)."""
        await self.send_frame(encode_message(message, bfloat16=bfloat16))

    async def send_frame(self, payload: bytes) -> None:
        """Send one already-encoded frame payload."""
        header = frame_header(len(payload), max_frame_size=self.max_frame_size)
        if len(payload) <= SEND_CHUNK:
            await self.stream.send_all(header + payload)
        else:  # do not copy a large tensor just to prepend four bytes
            await self.stream.send_all(header)
            await self.stream.send_all(payload)

    async def receive_message(self) -> Message | None:
        """The next message, or None when the peer ended the stream between messages."""
        payload = await self.receive_frame()
        if payload is None:
            return None
        try:
            return decode_message(payload)
        except RemoteProtocolError as exc:
            self._close_connection(exc)
            raise

    async def receive_frame(self) -> bytes | None:
        """The next frame's payload, or None at a clean end of stream."""
        try:
            while (payload := self._decoder.next_frame()) is None:
                data = await self.stream.receive_some()
                if not data:
                    self._decoder.end_of_stream()
                    return None
                self._decoder.feed(data)
        except RemoteProtocolError as exc:
            self._close_connection(exc)
            raise
        return payload

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> MessageStream:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _close_connection(self, error: RemoteProtocolError) -> None:
        self.connection.close(error.error_code, str(error)[:200])
