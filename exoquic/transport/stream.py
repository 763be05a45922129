"""A QUIC stream as a trio `HalfCloseableStream`, with bounded buffers both ways.

The stream never touches aioquic itself: it queues outgoing bytes and read
credit, marks itself dirty, and its connection's task hands them to aioquic.
Backpressure lives here:

- sending: `send_all` waits while the bytes not yet acknowledged by the peer
  (aioquic's send buffer, as last reported by the connection task, plus what
  is queued here) reach `send_high_water`. aioquic alone would buffer without
  limit.
- receiving: the peer may only send `receive_window` bytes beyond what our
  reader consumed (see `ExoQuicConnection._write_stream_limits`), so the
  receive buffer here never holds more than the window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from exoquic.transport.errors import ConnectionClosed, StreamReset

if TYPE_CHECKING:
    from exoquic.transport.connection import Connection

# Bytes handed to aioquic per queued write: small enough that one write does
# not overshoot the high-water mark by much, large enough to stay cheap.
SEND_CHUNK = 64 * 1024


@dataclass(frozen=True)
class StreamStatistics:
    """How much a stream holds right now, in bytes."""

    receive_buffered: int
    """Received, not yet read by the application (never above `receive_window`)."""
    send_buffered: int
    """Written by the application, not yet acknowledged by the peer."""


class QuicStream(trio.abc.HalfCloseableStream):
    """One bidirectional stream of an authenticated QUIC connection.

    Use it like any trio stream (`send_all`, `receive_some`, `send_eof`,
    `aclose`, `async with`). `receive_some` returns b"" once the peer sent
    its end of stream; operations raise `StreamReset` when the peer abandoned
    the stream and `ConnectionClosed` when the connection is gone.
    """

    def __init__(self, connection: Connection, stream_id: int) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self._high_water = connection.config.send_high_water
        self._credit_step = max(1, connection.config.receive_window // 4)
        self._changed = trio.Event()
        self._closed = False  # aclose() was called
        self._receiving = False
        self._sending = False
        # receive side, filled by the connection task
        self._received = bytearray()
        self._eof_received = False
        self._eof_returned = False
        self._receive_error: StreamReset | None = None
        # send side
        self._eof_queued = False
        self._send_error: StreamReset | None = None
        self._unacked = 0  # aioquic's send buffer, reported by the connection task
        # requests for the connection task
        self._outgoing: deque[tuple[bytes, bool]] = deque()
        self._outgoing_bytes = 0
        self._consumed = 0
        self._stop_code: int | None = None
        self._reset_code: int | None = None

    # --- trio stream API --------------------------------------------------

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Queue all of `data` for sending, waiting while too much is unacknowledged."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_can_send()
        self._sending = True
        try:
            waited = False
            view = memoryview(data).cast("B")
            for start in range(0, len(view), SEND_CHUNK):
                waited = await self._wait_send_room() or waited
                self._queue(bytes(view[start : start + SEND_CHUNK]), eof=False)
            if not waited:
                # Yield after queueing, so the connection task sends it right away.
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check_can_send()
        await self._wait_send_room()

    async def send_eof(self) -> None:
        """Send the end of stream; the peer's `receive_some` then returns b""."""
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        if not self._eof_queued:
            self._raise_if_broken(self._send_error)
            self._queue(b"", eof=True)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Up to `max_bytes` received bytes (all buffered when None); b"" at end of stream."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self._receiving = True
        try:
            if self._readable():
                await trio.lowlevel.cancel_shielded_checkpoint()
            while not self._readable():  # waiting is the checkpoint
                await self._changed.wait()
            return self._take(max_bytes)
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        """Close gracefully: send end of stream, stop receiving. Unread data is dropped."""
        if not self._closed:
            self._closed = True
            if not self._eof_queued and self._send_error is None:
                self._queue(b"", eof=True)
            if not (self._eof_received or self._receive_error):
                self._stop_code = 0
            self._received.clear()
            self._notify()
            self.connection._mark_dirty(self)
        await trio.lowlevel.checkpoint()

    def reset(self, error_code: int) -> None:
        """Abandon both directions at once with `error_code` (RESET_STREAM + STOP_SENDING)."""
        if self._closed:
            return
        self._closed = True
        self._reset_code = error_code
        if not (self._eof_received or self._receive_error):
            self._stop_code = error_code
        self._outgoing.clear()
        self._outgoing_bytes = 0
        self._received.clear()
        self._notify()
        self.connection._mark_dirty(self)

    def statistics(self) -> StreamStatistics:
        return StreamStatistics(len(self._received), self._unacked + self._outgoing_bytes)

    # --- internals: the application side ----------------------------------

    def _check_can_send(self) -> None:
        if self._closed or self._eof_queued:
            raise trio.ClosedResourceError("stream was closed for sending")
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this stream")
        self._raise_if_broken(self._send_error)

    def _raise_if_broken(self, error: StreamReset | None) -> None:
        if error is not None:
            raise error
        if self.connection.closed is not None:
            raise self.connection.closed

    async def _wait_send_room(self) -> bool:
        """Wait until the stream may queue more; returns whether it had to wait."""
        waited = False
        while True:
            if self._closed:
                raise trio.ClosedResourceError("stream was closed")
            self._raise_if_broken(self._send_error)
            if self._unacked + self._outgoing_bytes < self._high_water:
                return waited
            await self._changed.wait()
            waited = True

    def _queue(self, data: bytes, *, eof: bool) -> None:
        self._outgoing.append((data, eof))
        self._outgoing_bytes += len(data)
        self._eof_queued = self._eof_queued or eof
        self.connection._mark_dirty(self)

    def _readable(self) -> bool:
        return bool(
            self._received
            or self._eof_received
            or self._receive_error
            or self._closed
            or self.connection.closed
        )

    def _take(self, max_bytes: int | None) -> bytes:
        if self._receive_error is not None:
            raise self._receive_error
        if self._received:
            size = len(self._received) if max_bytes is None else max_bytes
            data = bytes(self._received[:size])
            del self._received[:size]
            self._consumed += len(data)
            # Credit only matters to a peer that is running out of it: wake the
            # connection task for it after a quarter window, otherwise let it
            # ride along with the next write or datagram (saves a task switch
            # per read). The peer still holds >= 3/4 window of credit.
            self.connection._mark_dirty(self, wake=self._consumed >= self._credit_step)
            return data
        if self._eof_received:
            self._eof_returned = True
            return b""
        if self._closed:
            raise trio.ClosedResourceError("stream was closed")
        assert self.connection.closed is not None
        raise self.connection.closed

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # --- internals: called by the connection task only --------------------

    def _on_data(self, data: bytes, end_stream: bool) -> None:
        if self._closed:
            self._consumed += len(data)  # nobody will read it; keep credit moving
            self.connection._mark_dirty(self)
        else:
            self._received += data
        self._eof_received = self._eof_received or end_stream
        self._notify()

    def _on_reset(self, error_code: int) -> None:
        self._receive_error = StreamReset(self.stream_id, error_code)
        self._received.clear()
        self._notify()

    def _on_stop_sending(self, error_code: int) -> None:
        self._send_error = StreamReset(self.stream_id, error_code)
        self._outgoing.clear()
        self._outgoing_bytes = 0
        self._notify()

    def _on_connection_closed(self, error: ConnectionClosed) -> None:
        self._outgoing.clear()
        self._outgoing_bytes = 0
        self._notify()

    def _set_unacked(self, unacked: int) -> None:
        if unacked != self._unacked:
            self._unacked = unacked
            self._notify()

    def _take_requests(self) -> tuple[list[tuple[bytes, bool]], int, int | None, int | None]:
        """Queued writes, newly consumed bytes, and stop/reset codes, handed over once."""
        writes = list(self._outgoing)
        self._outgoing.clear()
        self._outgoing_bytes = 0
        consumed, self._consumed = self._consumed, 0
        stop, self._stop_code = self._stop_code, None
        reset, self._reset_code = self._reset_code, None
        return writes, consumed, stop, reset

    def _done(self) -> bool:
        """The application is finished with this stream in both directions."""
        receive_done = self._closed or self._eof_returned or self._receive_error is not None
        send_done = self._closed or self._eof_queued or self._send_error is not None
        return receive_done and send_done and not self._outgoing
