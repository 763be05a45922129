"""One authenticated QUIC connection, driven by a single trio task.

Only the connection's task touches its `Session` (and so aioquic). Everything
else talks to it through queues plus a wakeup event: the endpoint pushes
datagrams into the inbox, streams queue writes and read credit and mark
themselves dirty. After every wakeup the task feeds all inputs to aioquic,
hands out the events, sends what aioquic has to send, and sleeps until the
next wakeup or until aioquic's timer (or the keep-alive) is due. No polling.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio
from aioquic.quic.events import (
    ConnectionIdIssued,
    ConnectionIdRetired,
    ConnectionTerminated,
    QuicEvent,
    StopSendingReceived,
    StreamDataReceived,
    StreamReset,
)

from exoquic.identity.node_id import node_id_from_public_key
from exoquic.transport.config import TransportConfig
from exoquic.transport.errors import ConnectionClosed, ErrorCode, TransportError
from exoquic.transport.session import NetworkAddress, Session
from exoquic.transport.stream import QuicStream
from exoquic.wire.errors import RemoteProtocolError

logger = logging.getLogger(__name__)

StreamHandler = Callable[[QuicStream], Awaitable[None]]
"""Serves one stream the peer opened; the stream is closed when it returns."""


class _Host(Protocol):
    """What a connection needs from its endpoint."""

    def send_datagram_nowait(self, data: bytes, address: NetworkAddress) -> bool: ...
    async def send_datagram(self, data: bytes, address: NetworkAddress) -> None: ...
    def register_cid(self, cid: bytes, connection: Connection) -> None: ...
    def unregister_cid(self, cid: bytes) -> None: ...
    def forget(self, connection: Connection) -> None: ...
    def authenticated(self, connection: Connection) -> None: ...
    def stream_handler_for(self, alpn: str) -> StreamHandler | None: ...


class Connection:
    """An authenticated QUIC connection to one peer.

    `peer_public_key` is the peer's raw ed25519 key, already checked against
    the trust store (or the exact key dialled, or accepted for pairing when
    `alpn == PAIRING_ALPN`). Open streams with `open_stream()`; streams the
    peer opens go to the endpoint's handler for this connection's ALPN.
    """

    def __init__(
        self,
        host: _Host,
        session: Session,
        remote_address: NetworkAddress,
        config: TransportConfig,
    ) -> None:
        self._host = host
        self._session = session
        self.remote_address = remote_address
        self.config = config
        self.closed: ConnectionClosed | None = None
        self._inbox: deque[tuple[bytes, NetworkAddress]] = deque()
        self._wakeup = trio.Event()
        self._state_changed = trio.Event()
        self._finished = trio.Event()
        self._close_sent = trio.Event()
        self._close_request: tuple[int, str] | None = None
        self._close_applied = False
        self._established = False
        self._terminated = False
        self._abandoned = False
        self._streams: dict[int, QuicStream] = {}
        self._dirty: set[QuicStream] = set()
        self._next_stream_id = 0 if session.is_client else 1
        self._ping_at: float | None = None
        self._ping_count = 0
        self._handlers: trio.Nursery | None = None
        self._delivered = False
        self._timer: float | None = None  # aioquic's, read after every pass
        # A server side handshake that has not authenticated by then is dropped
        # (see transport/admission.py); our own dials are bounded by their callers.
        self._handshake_deadline = (
            math.inf if session.is_client else trio.current_time() + config.handshake_timeout
        )

    # --- public API -------------------------------------------------------

    @property
    def peer_public_key(self) -> bytes:
        """The peer's raw 32-byte ed25519 key."""
        key = self._session.peer_public_key
        assert key is not None, "connection is not authenticated yet"
        return key

    @property
    def peer_node_id(self) -> str:
        """The peer's node id (text form of its key), e.g. to check its `Hello`."""
        return node_id_from_public_key(self.peer_public_key)

    @property
    def alpn(self) -> str:
        """`NODE_ALPN` or `PAIRING_ALPN`."""
        alpn = self._session.alpn
        assert alpn is not None, "connection is not authenticated yet"
        return alpn

    @property
    def established(self) -> bool:
        """Both sides accepted each other and the connection is not closing."""
        return self._established and self.closed is None

    @property
    def is_client(self) -> bool:
        """Whether we opened this connection."""
        return self._session.is_client

    async def open_stream(self) -> QuicStream:
        """Open a new bidirectional stream to the peer."""
        await trio.lowlevel.checkpoint()
        if self.closed is not None:
            raise self.closed
        stream = QuicStream(self, self._next_stream_id)
        self._next_stream_id += 4
        self._streams[stream.stream_id] = stream
        # An empty write makes aioquic create the stream now, in id order.
        stream._queue(b"", eof=False)
        return stream

    def close(self, error_code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close the connection with `error_code`; unsent data is dropped."""
        if self.closed is None:
            self._close_request = (error_code, reason)
            self._set_closed(ConnectionClosed(error_code, reason))
            self._wake()

    def abandon(self, reason: str) -> None:
        """Drop an unauthenticated connection at once, sending nothing: it may be
        junk from a forged address, and a CONNECTION_CLOSE would keep its slot
        taken for three more probe timeouts."""
        if self.closed is None:
            self._set_closed(ConnectionClosed(ErrorCode.HANDSHAKE_ABANDONED, reason))
        self._terminated = self._abandoned = True
        self._wake()

    async def aclose(self) -> None:
        """Close with NO_ERROR and wait until the connection is gone."""
        self.close()
        await self.wait_closed()

    async def wait_closed(self) -> ConnectionClosed:
        """Wait until the connection has terminated; returns why it closed."""
        await self._finished.wait()
        assert self.closed is not None
        return self.closed

    async def wait_close_sent(self) -> None:
        """Wait until a locally requested close has gone out (or the connection ended)."""
        await self._close_sent.wait()

    def statistics(self) -> dict[str, int]:
        """Open streams and datagrams waiting for the connection task."""
        return {"streams": len(self._streams), "inbox": len(self._inbox)}

    # --- called by the endpoint and by streams ----------------------------

    def datagram_received(self, data: bytes, address: NetworkAddress) -> None:
        if len(self._inbox) < self.config.inbox_size:
            self._inbox.append((data, address))
            self._wake()

    def _mark_dirty(self, stream: QuicStream, *, wake: bool = True) -> None:
        self._dirty.add(stream)
        if wake:
            self._wake()

    def _wake(self) -> None:
        self._wakeup.set()

    async def wait_established(self) -> None:
        """Wait until both sides accepted each other; raise `ConnectionClosed` if not."""
        while not self._established:
            if self.closed is not None:
                raise self.closed
            await self._state_changed.wait()

    # --- the connection task ----------------------------------------------

    async def run(self) -> None:
        """Drive the connection until it terminates (the endpoint runs this)."""
        try:
            async with trio.open_nursery() as handlers:
                self._handlers = handlers
                await self._drive()
                handlers.cancel_scope.cancel()
        except Exception as exc:  # a bug here must not take the whole endpoint down
            logger.exception("connection to %s failed", self.remote_address)
            self._set_closed(ConnectionClosed(ErrorCode.INTERNAL_ERROR, repr(exc)))
        finally:
            self._set_closed(ConnectionClosed(ErrorCode.INTERNAL_ERROR, "connection task ended"))
            self._host.forget(self)
            self._close_sent.set()
            self._finished.set()

    async def _drive(self) -> None:
        # One cancel scope is the timer for many waits: its deadline moves
        # after every step (cheap); a new scope is only needed once it fires.
        while not self._terminated:
            with trio.CancelScope() as timer:
                while not self._terminated:
                    self._wakeup = trio.Event()  # wakeups from here on are not missed
                    if self._step(trio.current_time()):
                        await self._let_application_answer()
                    if self._abandoned:
                        return
                    await self._transmit()
                    self._after_transmit()
                    timer.deadline = self._deadline()
                    if not self._terminated:
                        await self._wakeup.wait()

    def _deadline(self) -> float:
        timer = self._timer = self._session.get_timer()
        deadline = math.inf if timer is None else timer
        if self._ping_at is not None:
            deadline = min(deadline, self._ping_at)
        if not self._established:
            deadline = min(deadline, self._handshake_deadline)
        return deadline

    async def _let_application_answer(self) -> None:
        """Yield twice before sending, so that a task answering what just
        arrived queues its answer first: answer and ACK then leave in one
        packet and one pass through aioquic, instead of two (each costs more
        than these yields). Two, because trio may run this task before it."""
        for _ in range(2):
            await trio.lowlevel.cancel_shielded_checkpoint()
        self._wakeup = trio.Event()  # what woke it during the yields is handled now
        self._step(trio.current_time())

    def _step(self, now: float) -> bool:
        """Feed every pending input to aioquic; True if streams received data."""
        self._delivered = False
        session = self._session
        if not self._established and now >= self._handshake_deadline:
            self.abandon("no handshake in time")
            return False
        timer = self._timer  # nothing touched aioquic since the last pass read it
        if timer is not None and now >= timer:
            self._timer = None
            session.handle_timer(now)
        if self._ping_at is not None and now >= self._ping_at:
            self._ping_count += 1
            session.quic.send_ping(self._ping_count)
            self._ping_at = now + self.config.keepalive_interval
        while self._inbox:
            data, address = self._inbox.popleft()
            session.receive_datagram(data, address, now)
        while self._dirty:
            self._flush(self._dirty.pop())
        if self._close_request is not None and not self._close_applied:
            session.close(*self._close_request)
            self._close_applied = True
        while (event := session.next_event()) is not None:
            self._handle_event(event)
        self._update_state(now)
        return self._delivered

    def _update_state(self, now: float) -> None:
        session = self._session
        if not self._established and session.established:
            self._established = True
            self._ping_at = now + self.config.keepalive_interval
            self._host.authenticated(self)
            self._state_changed.set()
        if session.closed is not None:
            self._ping_at = None
            self._set_closed(session.closed)

    async def _transmit(self) -> None:
        close_applied = self._close_applied
        datagrams = self._session.datagrams_to_send(trio.current_time())
        for index, (data, address) in enumerate(datagrams):
            if not self._host.send_datagram_nowait(data, address):
                # The socket buffer is full. Shielded: the timer scope must not
                # abandon a flight halfway (the rest would look lost).
                with trio.CancelScope(shield=True):
                    for data, address in datagrams[index:]:
                        await self._host.send_datagram(data, address)
                break
        if close_applied:
            self._close_sent.set()

    def _after_transmit(self) -> None:
        quic = self._session.quic
        for stream_id, stream in list(self._streams.items()):
            stream._set_unacked(quic.send_buffered(stream_id))
            if stream._done() and not quic.has_stream(stream_id):
                del self._streams[stream_id]
                quic.forget_stream(stream_id)

    def _flush(self, stream: QuicStream) -> None:
        """Hand a stream's queued requests to aioquic."""
        quic = self._session.quic
        writes, consumed, stop, reset = stream._take_requests()
        if self.closed is not None:
            return
        try:
            for data, eof in writes:
                quic.send_stream_data(stream.stream_id, data, end_stream=eof)
            if consumed:
                quic.consume(stream.stream_id, consumed)
            if stop is not None and quic.has_stream(stream.stream_id):
                quic.stop_stream(stream.stream_id, stop)
            if reset is not None:
                quic.reset_stream(stream.stream_id, reset)
        except (ValueError, RuntimeError) as exc:
            # The peer stopped or the stream finished while the request was queued.
            logger.debug("stream %d: %s", stream.stream_id, exc)
        stream._set_unacked(quic.send_buffered(stream.stream_id))

    def _handle_event(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            stream = self._stream_for(event.stream_id)
            if stream is not None:
                stream._on_data(event.data, event.end_stream)
                self._delivered = True
        elif isinstance(event, StreamReset):
            stream = self._stream_for(event.stream_id)
            if stream is not None:
                stream._on_reset(event.error_code)
        elif isinstance(event, StopSendingReceived):
            stream = self._stream_for(event.stream_id)
            if stream is not None:
                stream._on_stop_sending(event.error_code)
        elif isinstance(event, ConnectionIdIssued):
            self._host.register_cid(event.connection_id, self)
        elif isinstance(event, ConnectionIdRetired):
            self._host.unregister_cid(event.connection_id)
        elif isinstance(event, ConnectionTerminated):
            self._terminated = True

    def _stream_for(self, stream_id: int) -> QuicStream | None:
        """Our stream for an event, creating (and serving) one the peer just opened."""
        stream = self._streams.get(stream_id)
        peer_opened = bool(stream_id & 1) == self.is_client  # bit 0: opened by the server
        if stream is not None or not peer_opened:
            return stream
        handler = self._host.stream_handler_for(self.alpn)
        if stream_id & 2 or handler is None or self._handlers is None:
            # Unidirectional streams are not part of the protocol; no handler: nobody serves it.
            self._refuse_stream(stream_id)
            return None
        stream = self._streams[stream_id] = QuicStream(self, stream_id)
        self._handlers.start_soon(self._serve_stream, handler, stream)
        return stream

    def _refuse_stream(self, stream_id: int) -> None:
        quic = self._session.quic
        try:
            quic.stop_stream(stream_id, ErrorCode.STREAM_REFUSED)
            if not stream_id & 2:
                quic.reset_stream(stream_id, ErrorCode.STREAM_REFUSED)
        except ValueError:
            pass

    async def _serve_stream(self, handler: StreamHandler, stream: QuicStream) -> None:
        try:
            async with stream:
                await handler(stream)
        except RemoteProtocolError as exc:
            # The peer broke the wire protocol: drop this connection only.
            logger.info("closing connection to %s: %s", self.remote_address, exc)
            self.close(exc.error_code, str(exc))
        except (TransportError, trio.ClosedResourceError):
            pass  # the peer went away or abandoned the stream: nothing to answer
        except Exception:
            logger.exception("stream handler failed on stream %d", stream.stream_id)
            stream.reset(ErrorCode.INTERNAL_ERROR)

    def _set_closed(self, error: ConnectionClosed) -> None:
        if self.closed is not None:
            return
        self.closed = error
        for stream in self._streams.values():
            stream._on_connection_closed(error)
        self._state_changed.set()
