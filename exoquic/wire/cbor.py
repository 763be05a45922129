"""Strict CBOR (RFC 8949) on top of cbor2.

Decoding accepts only plain data: maps with text keys, arrays, text and byte
strings, integers, floats, booleans and null. It refuses what a peer could use
to confuse or slow us: indefinite lengths, duplicate map keys, nesting deeper
than `max_depth`, every tag (cbor2 would otherwise build dates, big integers,
regular expressions, shared references... from peer input), simple values
other than true/false/null, and bytes after the one item. Encoding is
canonical (RFC 8949 section 4.2.1: shortest forms, sorted map keys), so equal
values always give equal bytes.
"""

from __future__ import annotations

import io
from typing import Any, NoReturn

import cbor2

from exoquic.wire.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

MAX_DEPTH = 8
"""Nesting of arrays and maps a message may use (messages need 4)."""

# The tags cbor2 6.3 decodes by itself without calling `tag_hook` (found by
# probing every tag up to 70000). Overriding them routes them to the refusal;
# the type walk after decoding backs this up should a later cbor2 add more.
_BUILTIN_TAGS = (0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258,
                 260, 261, 1004, 43000, 55799)  # fmt: skip

_PLAIN_SCALARS = (str, bytes, int, float, bool, type(None))
# Exactly these types need no further look (ints do: their range is checked).
_EXACT_SCALARS = frozenset((str, bytes, float, bool, type(None)))


def dumps(value: Any) -> bytes:
    """Canonical CBOR of a plain value; LocalProtocolError for anything else."""
    _check_plain(value, MAX_DEPTH, LocalProtocolError)
    try:
        return cbor2.dumps(value, canonical=True)
    except (cbor2.CBOREncodeError, ValueError, TypeError) as exc:  # e.g. int over 64 bits
        raise LocalProtocolError(f"cannot encode as CBOR: {exc}") from exc


def loads(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode exactly one strict CBOR item from `data`.

    Raises RemoteProtocolError (MALFORMED_MESSAGE) for anything else.
    """
    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(
        stream,
        tag_hook=_refuse_tag,
        semantic_decoders={tag: _refuse_semantic_tag for tag in _BUILTIN_TAGS},
        max_depth=max_depth,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        strict_hashable_types=True,
    )
    try:
        value = decoder.decode()
    except cbor2.CBORDecodeError as exc:
        raise RemoteProtocolError(f"invalid CBOR: {exc}", ErrorCode.MALFORMED_MESSAGE) from None
    if stream.tell() != len(data):
        raise RemoteProtocolError(
            f"{len(data) - stream.tell()} bytes after the CBOR item", ErrorCode.MALFORMED_MESSAGE
        )
    _check_plain(value, max_depth, RemoteProtocolError)
    return value


def _refuse_tag(tag: cbor2.CBORTag, immutable: bool) -> NoReturn:
    raise ValueError(f"CBOR tag {tag.tag} is not allowed")


def _refuse_semantic_tag(*args: Any) -> NoReturn:
    raise ValueError("CBOR tags are not allowed")


def _check_plain(
    value: Any, depth: int, error: type[LocalProtocolError] | type[RemoteProtocolError]
) -> None:
    """Raise `error` unless `value` is built only from plain CBOR types."""
    kind = type(value)
    if kind in _EXACT_SCALARS:  # the common case, without isinstance walks
        return
    if isinstance(value, int) and not -(1 << 64) <= value < 1 << 64:
        # Wider integers would need the bignum tags that decoding refuses.
        raise error(f"integer {value} is outside CBOR's 64-bit range", ErrorCode.MALFORMED_MESSAGE)
    if isinstance(value, _PLAIN_SCALARS):
        return
    if depth <= 0:
        raise error("CBOR value nested too deeply", ErrorCode.MALFORMED_MESSAGE)
    if isinstance(value, list | tuple):
        for item in value:
            _check_plain(item, depth - 1, error)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise error(f"CBOR map key {key!r} is not text", ErrorCode.MALFORMED_MESSAGE)
            _check_plain(item, depth - 1, error)
    else:
        raise error(f"{type(value).__name__} is not plain CBOR data", ErrorCode.MALFORMED_MESSAGE)
