import time

import cbor2
import pytest

from exoquic.wire import cbor
from exoquic.wire.errors import (
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)


def test_plain_values_round_trip() -> None:
    value = {"text": "héllo", "bytes": b"\x00\xff", "list": [1, -2, 2**64 - 1, -(2**64)],
             "float": 0.5, "flags": [True, False, None], "nested": {"a": [[]]}}  # fmt: skip
    assert cbor.loads(cbor.dumps(value)) == value


def test_encoding_is_canonical() -> None:
    assert cbor.dumps({"b": 1, "a": 2}) == cbor.dumps({"a": 2, "b": 1})
    assert cbor.dumps({"bb": 1, "a": 2}).hex() == "a261610262626201"  # shorter keys first
    assert cbor.dumps(1.0) == bytes.fromhex("f93c00")  # shortest float that is exact


@pytest.mark.parametrize(
    ("hex_data", "match"),
    [
        ("", "invalid CBOR"),  # nothing at all
        ("0102", "1 bytes after"),  # trailing bytes
        ("9fff", "indefinite"),  # indefinite-length array
        ("5f41614162ff", "indefinite"),  # indefinite-length byte string
        ("a2616101616102", "Duplicate map key"),
        ("a1010203", "map key"),  # integer key
        ("a142010203", "is not text"),  # byte string key
        ("c11a514b67b0", "tag 1"),  # epoch datetime
        ("c249010000000000000000", "tag 2"),  # bignum
        ("d81c80", "tag 28"),  # shared reference
        ("d9d9f700", "tag 55799"),  # self-described CBOR
        ("d8ff00", "tag 255"),  # unknown tag
        ("f7", "UndefinedType"),  # undefined
        ("f0", "CBORSimpleValue"),  # simple value 16
        ("62fffe", "invalid CBOR"),  # invalid UTF-8
        ("5b0000000100000000", "invalid CBOR"),  # 4 GiB string announced, absent
        ("9b0000000100000000", "invalid CBOR"),  # 4 Gi-element array announced, absent
        ("81" * 9 + "00", "depth"),  # nesting 9 deep
    ],
)
def test_strictness(hex_data: str, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        cbor.loads(bytes.fromhex(hex_data))
    assert info.value.error_code == ErrorCode.MALFORMED_MESSAGE


def test_every_tag_cbor2_knows_is_refused() -> None:
    for tag in [*range(0, 300), 1004, 43000, 55799, 2**32, 2**63]:
        data = cbor2.dumps(cbor2.CBORTag(tag, 0))
        with pytest.raises(RemoteProtocolError):
            cbor.loads(data)


def test_nesting_up_to_the_limit_is_fine() -> None:
    assert cbor.loads(bytes.fromhex("81" * 8 + "00")) == [[[[[[[[0]]]]]]]]


def test_encoding_refuses_what_decoding_would() -> None:
    for value in [{1: 2}, 2**64, -(2**64) - 1, object(), {"a": {1, 2}}, [[[[[[[[[0]]]]]]]]]]:
        with pytest.raises(LocalProtocolError):
            cbor.dumps(value)


def test_protocol_error_must_say_whose_fault() -> None:
    with pytest.raises(TypeError):
        ProtocolError("who?")
    assert RemoteProtocolError("x").error_code == ErrorCode.PROTOCOL_ERROR


def test_millions_of_tiny_items_are_refused_before_decoding() -> None:
    # 4 Mi one-byte integers: cbor2 would take seconds and gigabytes on them.
    data = cbor2.dumps({"junk": [0] * (4 << 20)})
    started = time.perf_counter()
    with pytest.raises(RemoteProtocolError, match="items") as caught:
        cbor.loads(data)
    assert time.perf_counter() - started < 0.05
    assert caught.value.error_code == ErrorCode.MALFORMED_MESSAGE


def test_item_cap_counts_nested_items_and_map_keys() -> None:
    value = {"a": [[1, 2], {"b": b"x" * 100}]}  # map, key, array, array, 1, 2, map, key, bytes
    assert cbor.count_items(value, 100) == 9
    data = cbor.dumps(value)
    assert cbor.loads(data, max_items=9) == value
    with pytest.raises(RemoteProtocolError, match="over 8 items"):
        cbor.loads(data, max_items=8)


def test_an_announced_huge_array_is_refused_at_its_head() -> None:
    data = bytes.fromhex("9b7fffffffffffffff") + b"\x00" * (cbor.MAX_ITEMS + 1)
    with pytest.raises(RemoteProtocolError, match="items"):
        cbor.loads(data)


def test_count_items_stops_just_past_its_limit() -> None:
    assert cbor.count_items([0] * 1_000_000, 10) == 11
