"""Error codes the transport closes connections with, and the exceptions it raises."""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """QUIC application error codes used by the transport itself.

    They travel in CONNECTION_CLOSE (application variant) frames, so the peer
    learns why it was dropped. The 0x100 block is reserved for the transport;
    `wire/` protocol errors use their own codes.
    """

    NO_ERROR = 0x0
    PEER_NOT_TRUSTED = 0x101
    """The peer's key is not in the trust store, or is not the key we dialled."""
    NO_CERTIFICATE = 0x102
    """The peer presented no certificate."""
    BAD_CERTIFICATE = 0x103
    """The peer's certificate holds no ed25519 key."""
    BAD_HANDSHAKE = 0x104
    """Unexpected ALPN, session resumption or 0-RTT (all disabled in exoquic)."""
    HANDSHAKE_ABANDONED = 0x105
    """Local only, never sent: a handshake that did not finish within
    `TransportConfig.handshake_timeout`, or was evicted to make room."""
    REPLACED = 0x106
    """A newer node connection from the same key took this one's place."""
    STREAM_REFUSED = 0x120
    """Stream-level code: nobody here serves streams of this kind."""
    INTERNAL_ERROR = 0x1FF
    """A bug on our side; used to reset a stream whose handler crashed."""


AUTHENTICATION_ERRORS = frozenset(
    {
        ErrorCode.PEER_NOT_TRUSTED,
        ErrorCode.NO_CERTIFICATE,
        ErrorCode.BAD_CERTIFICATE,
        ErrorCode.BAD_HANDSHAKE,
    }
)


class TransportError(Exception):
    """Base class of the transport's exceptions."""


class ConnectionClosed(TransportError):
    """The connection is closed (or closing); no stream on it can be used.

    `error_code` is the QUIC error code, `by_peer` tells who closed it, and
    `idle_timeout` is true when the peer stopped answering.
    """

    def __init__(
        self,
        error_code: int,
        reason: str = "",
        *,
        by_peer: bool = False,
        idle_timeout: bool = False,
    ) -> None:
        who = "peer" if by_peer else "idle timeout" if idle_timeout else "local"
        super().__init__(f"connection closed by {who}: code 0x{error_code:x} {reason!r}")
        self.error_code = error_code
        self.reason = reason
        self.by_peer = by_peer
        self.idle_timeout = idle_timeout

    @property
    def authentication_failed(self) -> bool:
        """True when either side refused the other's identity."""
        return self.error_code in AUTHENTICATION_ERRORS


class StreamReset(TransportError):
    """The peer abandoned its side of a stream (RESET_STREAM or STOP_SENDING)."""

    def __init__(self, stream_id: int, error_code: int) -> None:
        super().__init__(f"stream {stream_id} reset by peer: code 0x{error_code:x}")
        self.stream_id = stream_id
        self.error_code = error_code
