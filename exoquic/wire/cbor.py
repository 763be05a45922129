"""Strict CBOR (RFC 8949) on top of cbor2.

Decoding accepts only plain data: maps with text keys, arrays, text and byte
strings, integers, floats, booleans and null. It refuses what a peer could use
to confuse or slow us: indefinite lengths, duplicate map keys, nesting deeper
than `max_depth`, every tag (cbor2 would otherwise build dates, big integers,
regular expressions, shared references... from peer input), simple values
other than true/false/null, more than `max_items` data items, and bytes after
the one item. The item count is checked on the raw bytes before cbor2 builds
anything: decoding millions of tiny items costs seconds and gigabytes, however
small each one is on the wire. Encoding is
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

MAX_ITEMS = 1 << 13
"""Data items (each scalar, array, map, and map key counts one) a decoded value
may hold. The largest message, a plan of 1024 nodes, has about 7,200."""

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


def loads(data: bytes, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_ITEMS) -> Any:
    """Decode exactly one strict CBOR item from `data`, of at most `max_items` items.

    Raises RemoteProtocolError (MALFORMED_MESSAGE) for anything else.
    """
    if len(data) > max_items:  # each item takes at least one byte: else no need to count
        _check_item_count(data, max_items)
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


def count_items(value: Any, limit: int) -> int:
    """Data items in a decoded plain value, counting up to just past `limit`
    (so a field can be bounded cheaply however large it is)."""
    count, todo = 0, [value]
    while todo and count <= limit:
        item = todo.pop()
        count += 1
        if isinstance(item, dict):
            count += len(item)  # the keys (text)
            todo.extend(item.values())
        elif isinstance(item, list | tuple):
            todo.extend(item)
    return count


def _check_item_count(data: bytes, max_items: int) -> None:
    """Walk the item heads of `data` (RFC 8949 section 3) without decoding
    anything; raise as soon as more than `max_items` items are announced.
    Anything else wrong (bad lengths, tags...) is left to cbor2's checks."""
    position, unread, count, end = 0, 1, 0, len(data)
    while unread and position < end:
        head = data[position]
        major, info = head >> 5, head & 0x1F
        position += 1
        if info < 24:
            argument = info
        elif info < 28:
            size = 1 << (info - 24)
            argument = int.from_bytes(data[position : position + size], "big")
            position += size
        else:
            return  # indefinite length or reserved: cbor2 refuses it
        unread -= 1
        count += 1
        if major in (2, 3):  # byte and text strings: skip their content
            position += argument
        elif major == 4:
            unread += argument
        elif major == 5:
            unread += 2 * argument
        elif major == 6:
            return  # a tag: cbor2 refuses it
        if count + unread > max_items:
            raise RemoteProtocolError(
                f"CBOR value of over {max_items} items", ErrorCode.MALFORMED_MESSAGE
            )


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
