"""The node's ed25519 identity: one private key, made on first start, kept in the home.

The same key signs discovery announcements and sits in the node's self-signed
TLS certificate, so peers recognise the node by it (see `node_id`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from exoquic import paths
from exoquic.identity.files import loose_permissions, write_private_file
from exoquic.identity.node_id import node_id_from_public_key

KEY_FILENAME = "identity.pem"


class IdentityError(Exception):
    """The identity key file cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Identity:
    """A node's private key with its raw public key and node id."""

    private_key: Ed25519PrivateKey
    public_key: bytes  # 32 raw bytes
    node_id: str

    @classmethod
    def from_private_key(cls, private_key: Ed25519PrivateKey) -> Identity:
        public_key = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(private_key, public_key, node_id_from_public_key(public_key))

    @classmethod
    def generate(cls) -> Identity:
        """A fresh identity held only in memory (tests, throwaway nodes)."""
        return cls.from_private_key(Ed25519PrivateKey.generate())

    def sign(self, data: bytes) -> bytes:
        """An ed25519 signature (64 bytes) over `data`."""
        return self.private_key.sign(data)

    def __repr__(self) -> str:
        return f"Identity(node_id={self.node_id!r})"  # never print the private key


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    """Whether `signature` is the holder of raw `public_key`'s signature over `data`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True


def load_or_create_identity(home: Path | None = None) -> Identity:
    """Load the node's identity from `home` (default `exoquic.paths.home()`),
    creating it on first start.

    The key is a PKCS#8 PEM file, mode 0600, created atomically. Raises
    IdentityError if it cannot be read or parsed, or if group or others may
    access it (like ssh, because anyone who can read it can impersonate the node).
    """
    path = (home if home is not None else paths.home()) / KEY_FILENAME
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            # If another process created the key meanwhile, its key wins and we load it.
            write_private_file(path, pem, replace=False)
        except OSError as exc:
            raise IdentityError(f"cannot create identity key {path}: {exc}") from exc
    return _load(path)


def _load(path: Path) -> Identity:
    try:
        if loose_permissions(path):
            raise IdentityError(
                f"identity key {path} is accessible by other users; "
                f"restrict it with `chmod 600 {path}` (or delete it to make a new identity)"
            )
        pem = path.read_bytes()
    except OSError as exc:
        raise IdentityError(f"cannot read identity key {path}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"identity key {path} is not a readable PEM key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"identity key {path} is not an ed25519 key")
    return Identity.from_private_key(key)
