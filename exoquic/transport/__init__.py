"""Authenticated QUIC between nodes: a trio driver around aioquic.

Open one endpoint per node; it accepts and opens connections on one UDP
socket. Every connection is mutually authenticated by ed25519 key pinning.
"""

from exoquic.transport.config import NODE_ALPN, PAIRING_ALPN, TransportConfig
from exoquic.transport.connection import Connection, StreamHandler
from exoquic.transport.endpoint import Endpoint, open_endpoint
from exoquic.transport.errors import ConnectionClosed, ErrorCode, StreamReset, TransportError
from exoquic.transport.messages import MessageStream
from exoquic.transport.stream import QuicStream, StreamStatistics

__all__ = [
    "NODE_ALPN",
    "PAIRING_ALPN",
    "Connection",
    "ConnectionClosed",
    "Endpoint",
    "ErrorCode",
    "MessageStream",
    "QuicStream",
    "StreamHandler",
    "StreamReset",
    "StreamStatistics",
    "TransportConfig",
    "TransportError",
    "open_endpoint",
]
