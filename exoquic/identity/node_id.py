"""Node ids: a short text form of a node's ed25519 public key that people can
read aloud and compare, e.g. `exq-XGYA-KPPC-6SEY-M6EB-T`.

The id is the first 80 bits of SHA-256 over the key (with a domain label),
as 16 Crockford base32 symbols in groups of four, then one mod-37 check symbol.
80 bits make finding a second key with the same id (what pinning a peer by id
alone relies on, see `TrustStore.add_by_id`) far out of reach; the check
symbol catches a mistyped or misread symbol before anything is looked up.
"""

from __future__ import annotations

import functools
import hashlib

from exoquic.identity import crockford

PREFIX = "exq"
ID_SYMBOLS = 16
ID_BITS = 5 * ID_SYMBOLS
PUBLIC_KEY_SIZE = 32
_HASH_LABEL = b"exoquic node id v1\x00"
MAX_NAME_LENGTH = 64


class NodeIdError(ValueError):
    """Text that is not a valid node id; the message says what is wrong."""


def node_id_from_public_key(public_key: bytes) -> str:
    """The canonical node id of a raw 32-byte ed25519 public key."""
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValueError(f"an ed25519 public key has 32 bytes, not {len(public_key)}")
    digest = hashlib.sha256(_HASH_LABEL + public_key).digest()
    value = int.from_bytes(digest, "big") >> (256 - ID_BITS)
    return _format(value)


@functools.lru_cache(maxsize=1024)  # every ring message names its origin
def parse_node_id(text: str) -> str:
    """Check a node id as typed or read back and return its canonical form.

    Accepts any case, with or without the `exq` prefix and hyphens, and the
    confusions O/0 and I/L/1. Raises NodeIdError naming the problem.
    """
    symbols = crockford.normalize(text)
    if len(symbols) == ID_SYMBOLS + 1 + len(PREFIX) and symbols.startswith(PREFIX.upper()):
        symbols = symbols[len(PREFIX) :]
    if len(symbols) != ID_SYMBOLS + 1:
        raise NodeIdError(
            f"node id {text!r} has {len(symbols)} symbols; "
            f"expected {ID_SYMBOLS} plus a check symbol, like {_format(0)!r}"
        )
    try:
        value = crockford.decode(symbols[:-1])
    except ValueError as exc:
        raise NodeIdError(f"node id {text!r}: {exc}") from None
    expected, given = crockford.check_symbol(value), symbols[-1]
    if given != expected:
        raise NodeIdError(
            f"node id {text!r} fails its check symbol ({given!r} where {expected!r} "
            "was expected): a symbol was probably mistyped or two were swapped"
        )
    return _format(value)


def is_valid_device_name(name: object) -> bool:
    """Device names (shown next to node ids, kept in the trust store) are 1-64
    printable characters without surrounding whitespace."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= MAX_NAME_LENGTH
        and name.isprintable()
        and name == name.strip()
    )


def _format(value: int) -> str:
    symbols = crockford.encode(value, ID_SYMBOLS)
    groups = [symbols[i : i + 4] for i in range(0, ID_SYMBOLS, 4)]
    return "-".join([PREFIX, *groups, crockford.check_symbol(value)])
