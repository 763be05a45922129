"""Crockford base32 with the mod-37 check symbol (https://www.crockford.com/base32.html).

Used for everything people read aloud or type: node ids and pairing codes. The
alphabet has no I, L, O or U, and decoding forgives the usual confusions
(O -> 0, I and L -> 1) and any case, so what someone reads off a screen decodes.
"""

from __future__ import annotations

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Check symbols run past the 32 data symbols: values 32..36 are `*~$=U`.
CHECK_ALPHABET = ALPHABET + "*~$=U"
CHECK_MODULUS = 37

_CONFUSIONS = {"O": "0", "I": "1", "L": "1"}
_VALUES = {symbol: value for value, symbol in enumerate(CHECK_ALPHABET)}


def encode(value: int, length: int) -> str:
    """The `length` symbols (5 bits each, most significant first) of `value`."""
    if not 0 <= value < 1 << (5 * length):
        raise ValueError(f"{value} does not fit in {length} base32 symbols")
    return "".join(ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(length)))


def check_symbol(value: int) -> str:
    """Crockford's check symbol for `value`: catches any single wrong symbol
    and any swap of two adjacent symbols."""
    return CHECK_ALPHABET[value % CHECK_MODULUS]


def normalize(text: str) -> str:
    """Upper-case `text`, drop hyphens and whitespace, undo O/0 and I/L/1 confusions."""
    kept = "".join(ch for ch in text.upper() if ch != "-" and not ch.isspace())
    return "".join(_CONFUSIONS.get(ch, ch) for ch in kept)


def decode(symbols: str) -> int:
    """The value of already-normalized data symbols; ValueError names a bad symbol."""
    value = 0
    for position, symbol in enumerate(symbols, start=1):
        digit = _VALUES.get(symbol)
        if digit is None or digit >= 32:
            raise ValueError(f"{symbol!r} (symbol {position}) is not a base32 symbol")
        value = value * 32 + digit
    return value
