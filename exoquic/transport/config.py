"""Transport settings and the aioquic configurations built from them."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass
from typing import Any

from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519

NODE_ALPN = "exoquic/1"
"""ALPN of the node protocol: only keys in the trust store (or the exact key dialled)."""

PAIRING_ALPN = "exoquic-pair/1"
"""ALPN of pairing, the only connections on which an unknown key is accepted."""

MAX_DATAGRAM_SIZE = 16000
"""aioquic writes STREAM frame lengths as 2-byte varints (< 16384 bytes)."""


@dataclass(frozen=True)
class TransportConfig:
    """Knobs of one endpoint. Defaults suit a LAN; tests shrink the timeouts."""

    idle_timeout: float = 5.0
    """A peer not heard from for this many seconds is dropped (its connection closes)."""
    keepalive_interval: float = 1.0
    """Seconds between PINGs, so a live but quiet peer never hits the idle timeout.
    At most a third of `idle_timeout`."""
    max_datagram_size: int = 1350
    """QUIC payload per UDP datagram; 1350 fits common paths without PMTU discovery."""
    loopback_datagram_size: int = 16000
    """Datagram size towards a loopback peer (no MTU there). Python's per-packet
    cost dominates, so bigger datagrams are what makes local rings fast. aioquic
    encodes frame lengths in 2 bytes, so nothing above ~16 KB works."""
    receive_window: int = 1 << 20
    """Per-stream bytes the peer may send beyond what our reader has consumed."""
    send_high_water: int = 1 << 20
    """`send_all` waits while a stream holds this many unacknowledged bytes."""
    max_frame_size: int = 64 << 20
    """Largest message frame a message stream accepts (checked before buffering)."""
    inbox_size: int = 4096
    """Datagrams queued per connection before more are dropped (UDP semantics)."""
    handshake_timeout: float = 3.0
    """A connection a peer opened to us that has not authenticated after this
    many seconds is dropped (a LAN handshake takes milliseconds; this leaves
    room for a few lost packets)."""
    max_handshakes_per_address: int = 8
    """Unfinished handshakes one source address may hold at a time."""
    max_connections_per_key: int = 8
    """Node connections one trusted key may hold *to* this endpoint at a time;
    a newer one closes the oldest beyond it (REPLACED). A node links once per
    model it serves with us (a ring per model), so a few are normal."""
    retry_above: float = 0.5
    """Once this fraction of the connection table is in use, a new peer must
    first prove its address with a stateless Retry (costs it one round trip).
    0 always asks; 1 never does."""

    def __post_init__(self) -> None:
        if not 0 < self.keepalive_interval * 3 <= self.idle_timeout:
            raise ValueError("keepalive_interval must be at most a third of idle_timeout")
        if self.max_connections_per_key < 1:
            raise ValueError("max_connections_per_key must be at least 1")
        if self.handshake_timeout <= 0 or self.max_handshakes_per_address < 1:
            raise ValueError("handshake_timeout and max_handshakes_per_address must be positive")
        if not 0.0 <= self.retry_above <= 1.0:
            raise ValueError("retry_above must be a fraction, 0..1")
        if self.receive_window < 2 or self.send_high_water < 1:
            raise ValueError("windows must be positive")
        for size in (self.max_datagram_size, self.loopback_datagram_size):
            if not SMALLEST_MAX_DATAGRAM_SIZE <= size <= MAX_DATAGRAM_SIZE:
                limits = f"{SMALLEST_MAX_DATAGRAM_SIZE}..{MAX_DATAGRAM_SIZE}"
                raise ValueError(f"datagram sizes must be within {limits}")

    def datagram_size_for(self, address: tuple[Any, ...]) -> int:
        """The datagram size to use towards a peer at `address`."""
        return self.loopback_datagram_size if is_loopback(address) else self.max_datagram_size


def is_loopback(address: tuple[Any, ...]) -> bool:
    """Whether a socket address is on this host's loopback."""
    try:
        ip = ipaddress.ip_address(str(address[0]).split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def quic_configuration(
    private_key: ed25519.Ed25519PrivateKey,
    certificate: x509.Certificate,
    config: TransportConfig,
    *,
    is_client: bool,
    alpn_protocols: list[str],
    max_datagram_size: int | None = None,
) -> QuicConfiguration:
    """An aioquic configuration presenting our certificate on either side.

    The certificate chain is never verified (`CERT_NONE`): certificates are
    self-signed and trust comes from pinning the raw ed25519 key after the
    handshake (see `session.py`). No session ticket is configured or stored,
    so there is no resumption and no 0-RTT.
    """
    return QuicConfiguration(
        alpn_protocols=alpn_protocols,
        is_client=is_client,
        # QUIC restarts its idle timer at the first packet sent after the last
        # one received, which is our next PING: up to one keep-alive interval
        # after the peer died. Shortening it by that interval makes a dead
        # peer noticed within `idle_timeout` of its last sign of life.
        idle_timeout=config.idle_timeout - config.keepalive_interval,
        max_datagram_size=max_datagram_size or config.max_datagram_size,
        max_stream_data=config.receive_window,
        # Per-stream credit is what bounds memory; the connection-wide limit
        # only needs to be large enough not to throttle several streams.
        max_data=config.receive_window * 16,
        certificate=certificate,
        private_key=private_key,
        verify_mode=ssl.CERT_NONE,
    )
