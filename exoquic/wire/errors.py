"""Protocol errors, named after who broke the rules (as in h11).

A `RemoteProtocolError` means the peer sent something the protocol forbids:
close that one connection (or stream) with `error_code`, nothing else. A
`LocalProtocolError` means our own code tried to send something invalid: a bug
here, never the peer's fault.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """QUIC application error codes for wire protocol violations.

    The 0x200 block belongs to `wire/` (the transport's own codes live in
    0x100, see `exoquic.transport.errors`).
    """

    PROTOCOL_ERROR = 0x200
    """A violation with no more specific code."""
    MALFORMED_FRAME = 0x201
    """A stream ended in the middle of a frame."""
    FRAME_TOO_LARGE = 0x202
    """A frame's length prefix is over the receiver's `max_frame_size`."""
    MALFORMED_MESSAGE = 0x203
    """The frame payload is not strict CBOR or not a message map."""
    UNKNOWN_MESSAGE = 0x204
    """The message type is not one this node knows."""
    UNSUPPORTED_VERSION = 0x205
    """The message type is known but not in this version."""
    INVALID_FIELD = 0x206
    """A field is missing, unknown, of the wrong type or out of range."""
    UNEXPECTED_MESSAGE = 0x207
    """A valid message that is not allowed at this point of the conversation."""
    PAIRING_FAILED = 0x208
    """Pairing did not prove that both sides know the code (or it expired)."""
    MODEL_NOT_SERVED = 0x209
    """The node does not serve the model the `Hello` named (not yet, or not at
    all); the dialer tries again later, not at once."""


class ProtocolError(Exception):
    """Base class: somebody broke the wire protocol. Do not raise it directly."""

    def __init__(self, message: str, error_code: int = ErrorCode.PROTOCOL_ERROR) -> None:
        if type(self) is ProtocolError:
            raise TypeError("raise LocalProtocolError or RemoteProtocolError instead")
        super().__init__(message)
        self.error_code = error_code


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol forbids (a bug on our side)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids: close with `error_code`."""
