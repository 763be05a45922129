"""aioquic's `QuicConnection` plus the hooks exoquic needs (sans-IO, no trio).

aioquic has no public API for four things the transport depends on, so this
subclass reaches into its internals, and *only* this file does (checked
against aioquic 1.7; `tests/transport/test_session.py` breaks if they move):

- a server asking for a client certificate (`tls._request_client_certificate`);
- the peer's certificate after the handshake (`tls._peer_certificate`);
- receive credit tied to what the application consumed: aioquic doubles a
  stream's MAX_STREAM_DATA whenever the peer uses half of it, whether or not
  anyone read the data, which makes receive buffering unbounded;
- how many bytes a stream still holds unacknowledged (for send backpressure),
  whether the handshake is confirmed, and why the connection is closing, as
  soon as closing begins rather than 3 PTOs later;
- acknowledgement timing: aioquic sends every ACK in a packet of its own 1 ms
  after the data, even when it is sending data anyway. Here pending ACKs ride
  in outgoing data packets, every second received datagram is acknowledged at
  once (RFC 9000 13.2.2), and a lone one after `ACK_DELAY`. A request/response
  exchange then costs two packets instead of four (Python pays per packet).
"""

from __future__ import annotations

from aioquic import tls
from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    MAX_STREAM_DATA_FRAME_CAPACITY,
    NetworkAddress,
    QuicConnection,
    QuicReceiveContext,
)
from aioquic.quic.events import ConnectionTerminated
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketSpace
from aioquic.quic.stream import QuicStream as AioquicStream
from cryptography import x509

ACK_DELAY = 0.005
"""Longest we hold back an ACK for a lone datagram (we advertise 25 ms)."""


class ExoQuicConnection(QuicConnection):
    """A QUIC connection that requires client certificates and bounds receive buffering.

    No session ticket fetcher or handler is ever passed to aioquic, so no
    ticket is issued or used: no session resumption and no 0-RTT.
    """

    def __init__(
        self,
        *,
        configuration: QuicConfiguration,
        receive_window: int,
        original_destination_connection_id: bytes | None = None,
        retry_source_connection_id: bytes | None = None,
    ) -> None:
        super().__init__(
            configuration=configuration,
            original_destination_connection_id=original_destination_connection_id,
            retry_source_connection_id=retry_source_connection_id,
        )
        self._receive_window = receive_window
        self._consumed: dict[int, int] = {}
        self._ack_delay = ACK_DELAY
        self._datagrams_unacked = 0
        self._data_written = False
        self.closed_by_peer = False
        self.idle_timed_out = False

    # --- certificates -----------------------------------------------------

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if not self._is_client:
            # The only switch that makes aioquic's server send a
            # CertificateRequest (and then verify the client's
            # CertificateVerify signature against its certificate).
            self.tls._request_client_certificate = True

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        """The certificate the peer presented, or None (also before the handshake)."""
        tls = getattr(self, "tls", None)
        return None if tls is None else tls._peer_certificate

    @property
    def handshake_confirmed(self) -> bool:
        """For a client: the server finished its side too (HANDSHAKE_DONE received)."""
        return self._handshake_confirmed

    # --- closing ----------------------------------------------------------

    @property
    def closing_event(self) -> ConnectionTerminated | None:
        """Why the connection is closing, from the moment closing starts."""
        return self._close_event

    def _handle_connection_close_frame(
        self, context: QuicReceiveContext, frame_type: int, buf: Buffer
    ) -> None:
        if self._close_event is None:
            self.closed_by_peer = True
        super()._handle_connection_close_frame(context, frame_type, buf)

    def handle_timer(self, now: float) -> None:
        """As aioquic's, also recording whether this timer is the idle timeout."""
        close_at = self._close_at
        if self._close_event is None and close_at is not None and now >= close_at:
            self.idle_timed_out = True
        super().handle_timer(now)

    # --- acknowledgements -------------------------------------------------

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        super().receive_datagram(data, addr, now)
        space = self._spaces.get(tls.Epoch.ONE_RTT)
        if space is not None and space.ack_at is not None:
            self._datagrams_unacked += 1
            if self._datagrams_unacked >= 2:
                space.ack_at = now

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        super().send_stream_data(stream_id, data, end_stream)
        self._data_written = self._data_written or bool(data) or end_stream

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        space = self._spaces.get(tls.Epoch.ONE_RTT)
        if space is not None and space.ack_at is not None and self._data_written:
            space.ack_at = now  # aioquic only writes an ACK whose timer is due
        self._data_written = False
        datagrams = super().datagrams_to_send(now)
        if space is None or space.ack_at is None:
            self._datagrams_unacked = 0
        return datagrams

    # --- flow control -----------------------------------------------------

    def send_buffered(self, stream_id: int) -> int:
        """Bytes written to a stream that the peer has not acknowledged yet."""
        stream = self._streams.get(stream_id)
        if stream is None:
            return 0
        sender = stream.sender
        return sender._buffer_stop - sender._buffer_start

    def has_stream(self, stream_id: int) -> bool:
        """Whether aioquic still keeps state (and may emit events) for a stream."""
        return stream_id in self._streams

    def consume(self, stream_id: int, nbytes: int) -> None:
        """The application has read `nbytes` more of a stream: the peer may send more."""
        if stream_id in self._streams:
            self._consumed[stream_id] = self._consumed.get(stream_id, 0) + nbytes

    def forget_stream(self, stream_id: int) -> None:
        """Drop our bookkeeping for a stream aioquic has discarded."""
        self._consumed.pop(stream_id, None)

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: AioquicStream
    ) -> None:
        # Replaces aioquic's policy (double the limit when half is used) with
        # "consumed + window", so unread data never exceeds the window.
        # Zero means a locally opened unidirectional stream: nothing to receive.
        stream_id = stream.stream_id
        if stream_id is None or stream.max_stream_data_local == 0 or stream.receiver.is_finished:
            return
        target = self._consumed.get(stream_id, 0) + self._receive_window
        # Raise in steps of half a window: one MAX_STREAM_DATA per half window
        # read, not one per read.
        if target - stream.max_stream_data_local >= self._receive_window // 2:
            stream.max_stream_data_local = target
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local
