"""Self-signed node certificates and extracting the raw ed25519 key from a peer's."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding

from exoquic.identity.certs import (
    CertificateError,
    make_certificate,
    peer_public_key,
    raw_public_key,
)


def test_certificate_holds_the_node_key_and_is_self_signed() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    cert = make_certificate(key)
    assert peer_public_key(cert) == raw_public_key(key.public_key())
    assert len(peer_public_key(cert)) == 32
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)  # raises if the signature is wrong


def test_key_survives_the_der_round_trip_tls_puts_it_through() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    der = make_certificate(key).public_bytes(Encoding.DER)
    assert peer_public_key(x509.load_der_x509_certificate(der)) == raw_public_key(key.public_key())


def test_no_certificate_is_an_error() -> None:
    with pytest.raises(CertificateError, match="no certificate"):
        peer_public_key(None)


def _signed_with(private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> x509.Certificate:
    template = make_certificate(ed25519.Ed25519PrivateKey.generate())
    return (
        x509.CertificateBuilder()
        .subject_name(template.subject)
        .issuer_name(template.issuer)
        .public_key(private_key.public_key())
        .serial_number(1)
        .not_valid_before(template.not_valid_before_utc)
        .not_valid_after(template.not_valid_after_utc)
        .sign(private_key, hashes.SHA256())
    )


@pytest.mark.parametrize(
    "private_key",
    [ec.generate_private_key(ec.SECP256R1()), rsa.generate_private_key(65537, 2048)],
    ids=["ecdsa", "rsa"],
)
def test_other_key_types_are_refused(
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
) -> None:
    with pytest.raises(CertificateError, match="not ed25519"):
        peer_public_key(_signed_with(private_key))
