"""Self-signed X.509 certificates that carry a node's ed25519 key.

QUIC needs TLS 1.3, and TLS needs certificates. exoquic does not use the
certificate chain for trust: each side presents a self-signed certificate
holding its ed25519 node key, TLS proves the peer holds the matching private
key (CertificateVerify), and the transport then pins the raw 32-byte key
against the trust store. Names, issuers and dates inside the certificate carry
no meaning.
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

# RFC 5280 4.1.2.5: 9999-12-31 23:59:59Z means "no well-defined expiration".
# A fixed, wide window also keeps clock skew between devices irrelevant.
_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


class CertificateError(ValueError):
    """A peer certificate does not carry a usable ed25519 key."""


def make_certificate(
    private_key: ed25519.Ed25519PrivateKey, common_name: str = "exoquic node"
) -> x509.Certificate:
    """A self-signed certificate for `private_key`, signed by that same key."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    public_key = private_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    # ed25519 signs the whole message itself: no separate hash algorithm.
    return builder.sign(private_key, algorithm=None)


def raw_public_key(public_key: ed25519.Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an ed25519 public key (the form the trust store keeps)."""
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def peer_public_key(cert: x509.Certificate | None) -> bytes:
    """The raw 32-byte ed25519 key held by a peer's certificate.

    Raises `CertificateError` when there is no certificate or its key is not
    ed25519 (or cannot be parsed).
    """
    if cert is None:
        raise CertificateError("peer sent no certificate")
    try:
        public_key = cert.public_key()
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"peer certificate key cannot be parsed: {exc}") from exc
    except UnsupportedAlgorithm as exc:
        raise CertificateError(f"peer certificate key is unsupported: {exc}") from exc
    if not isinstance(public_key, ed25519.Ed25519PublicKey):
        raise CertificateError(f"peer certificate key is {type(public_key).__name__}, not ed25519")
    return raw_public_key(public_key)
