import numpy as np
import pytest

from exoquic.wire.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from exoquic.wire.tensors import (
    bfloat16_bits_to_float32,
    decode_tensor,
    encode_tensor,
    float32_to_bfloat16_bits,
)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.int32])
def test_round_trip_is_exact(dtype: type) -> None:
    array = (np.arange(24) - 7).astype(dtype).reshape(2, 3, 4)
    wire = encode_tensor(array)
    assert wire["dtype"] == np.dtype(dtype).name
    assert wire["shape"] == [2, 3, 4]
    assert wire["data"] == array.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    decoded = decode_tensor(wire)
    assert decoded.dtype == dtype
    np.testing.assert_array_equal(decoded, array)


def test_decoded_array_is_a_read_only_view_of_the_bytes() -> None:
    wire = encode_tensor(np.ones((4, 8), np.float32))
    decoded = decode_tensor(wire)
    assert not decoded.flags.writeable
    assert decoded.base is not None  # no copy was made


def test_non_contiguous_and_big_endian_arrays_are_sent_correctly() -> None:
    array = np.arange(12, dtype=np.float32).reshape(3, 4).T
    np.testing.assert_array_equal(decode_tensor(encode_tensor(array)), array)
    big = np.arange(5, dtype=">i4")
    assert encode_tensor(big)["data"] == np.arange(5, dtype="<i4").tobytes()


def test_bfloat16_rounds_to_nearest_even() -> None:
    values = np.array(
        [1.0, 1 + 2**-8, 1 + 3 * 2**-8, -2.5, 0.0, -0.0, np.inf, -np.inf, 3.4e38], np.float32
    )
    bits = float32_to_bfloat16_bits(values)
    assert bits.tolist() == [0x3F80, 0x3F80, 0x3F82, 0xC020, 0, 0x8000, 0x7F80, 0xFF80, 0x7F80]
    nan_bits = float32_to_bfloat16_bits(np.array([np.nan, -np.nan], np.float32))
    assert np.isnan(bfloat16_bits_to_float32(nan_bits)).all()


def test_bfloat16_wire_form() -> None:
    array = np.array([[1.0, -2.0], [0.5, 1e-3]], np.float32)
    wire = encode_tensor(array, "bfloat16")
    assert wire["dtype"] == "bfloat16" and len(wire["data"]) == 8
    decoded = decode_tensor(wire)
    assert decoded.dtype == np.float32 and decoded.shape == (2, 2)
    np.testing.assert_allclose(decoded, array, rtol=2**-8)


def test_bfloat16_error_is_bounded_on_random_values() -> None:
    array = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    decoded = decode_tensor(encode_tensor(array, "bfloat16"))
    assert np.max(np.abs(decoded - array) / np.abs(array)) <= 2**-8


@pytest.mark.parametrize(
    ("array", "dtype"),
    [
        (np.ones(3, np.float64), None),
        (np.ones(3, np.int64), None),
        (np.ones(3, np.float16), "bfloat16"),
        (np.ones(3, np.float32), "int32"),
        (np.ones(3, np.float32), "float64"),
        (np.ones((1, 1, 1, 1, 1), np.float32), None),
    ],
)
def test_unsendable_arrays_are_our_bug(array: np.ndarray, dtype: str | None) -> None:
    with pytest.raises(LocalProtocolError):
        encode_tensor(array, dtype)


def _wire(**changes: object) -> dict[str, object]:
    wire = encode_tensor(np.zeros((2, 3), np.float32))
    wire.update(changes)
    return wire


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (_wire(dtype="float64"), "dtype"),
        (_wire(dtype=1), "dtype"),
        (_wire(shape=[2, -3]), "non-negative"),
        (_wire(shape=[2, True]), "non-negative"),
        (_wire(shape=(2, 3)), "list"),
        (_wire(shape=[2, 4]), "needs 32 bytes, got 24"),
        (_wire(data=b"\x00" * 23), "got 23"),
        (_wire(data="text"), "byte string"),
        (_wire(shape=[1, 1, 1, 1, 1]), "rank"),
        (_wire(shape=[2**40, 2**40]), "elements"),
        (_wire(shape=[0, 2**70], data=b""), "elements"),
        ({"dtype": "float32", "shape": [0]}, "keys"),
        ({**_wire(), "extra": 1}, "keys"),
        ([1, 2], "keys"),
    ],
)
def test_invalid_wire_tensors_are_the_peers_fault(wire: object, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        decode_tensor(wire)
    assert info.value.error_code == ErrorCode.INVALID_FIELD


def test_element_cap_is_enforced_before_looking_at_data() -> None:
    wire = {"dtype": "int32", "shape": [1001], "data": b""}
    with pytest.raises(RemoteProtocolError, match="over 1000 elements"):
        decode_tensor(wire, max_elements=1000)


def test_empty_tensor() -> None:
    decoded = decode_tensor(encode_tensor(np.zeros((0, 576), np.float32)))
    assert decoded.shape == (0, 576)
