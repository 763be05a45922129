"""Tensors on the wire: `{"dtype": str, "shape": [uint], "data": bytes}`.

`data` holds the elements in C order, little-endian. The same encoding is read
and written by every engine, which is what lets MLX and tinygrad nodes share a
ring. dtypes: float16, float32, int32 (token ids) and bfloat16, which numpy
lacks: it is sent from float32 (rounded to nearest even) and arrives as float32.

Arrays go to bytes and back with `tobytes`/`frombuffer`, never through Python
lists: encoding copies once, decoding float16/float32/int32 copies nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from exoquic.wire.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

MAX_TENSOR_ELEMENTS = 1 << 24
"""Default cap on elements per received tensor (16 Mi: 64 MiB of float32)."""
MAX_RANK = 4

# Wire name -> little-endian numpy dtype of the bytes on the wire.
WIRE_DTYPES: dict[str, np.dtype[Any]] = {
    "float16": np.dtype("<f2"),
    "bfloat16": np.dtype("<u2"),  # the upper 16 bits of a float32
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
}
_TENSOR_KEYS = {"dtype", "shape", "data"}


def encode_tensor(array: np.ndarray, dtype: str | None = None) -> dict[str, Any]:
    """The wire form of `array` (float16, float32 or int32).

    `dtype` defaults to the array's own; "bfloat16" rounds a float32 array.
    Raises LocalProtocolError for other dtypes, ranks or sizes.
    """
    wire_dtype = dtype if dtype is not None else array.dtype.name
    if wire_dtype == "bfloat16":
        if array.dtype != np.float32:
            raise LocalProtocolError(f"bfloat16 is encoded from float32, not {array.dtype}")
        array = float32_to_bfloat16_bits(array)
    elif wire_dtype not in WIRE_DTYPES or array.dtype.name != wire_dtype:
        raise LocalProtocolError(
            f"cannot send a {array.dtype} array as {wire_dtype!r}; wire dtypes are "
            f"{sorted(WIRE_DTYPES)}"
        )
    _check_shape(array.shape, MAX_TENSOR_ELEMENTS, LocalProtocolError)
    little_endian = np.ascontiguousarray(array, dtype=WIRE_DTYPES[wire_dtype])
    return {"dtype": wire_dtype, "shape": list(array.shape), "data": little_endian.tobytes()}


def decode_tensor(value: Any, *, max_elements: int = MAX_TENSOR_ELEMENTS) -> np.ndarray:
    """The array a peer sent, validated against its shape and `max_elements`.

    float16/float32/int32 come back as read-only views of the received bytes;
    bfloat16 as a new float32 array. Raises RemoteProtocolError (INVALID_FIELD).
    """
    if not isinstance(value, dict) or set(value) != _TENSOR_KEYS:
        raise _invalid(f"a tensor is a map with keys {sorted(_TENSOR_KEYS)}")
    wire_dtype, shape, data = value["dtype"], value["shape"], value["data"]
    if not isinstance(wire_dtype, str) or wire_dtype not in WIRE_DTYPES:
        raise _invalid(f"tensor dtype {wire_dtype!r} is not one of {sorted(WIRE_DTYPES)}")
    if not isinstance(shape, list) or not all(_is_uint(dim) for dim in shape):
        raise _invalid("tensor shape must be a list of non-negative integers")
    if not isinstance(data, bytes):
        raise _invalid("tensor data must be a byte string")
    count = _check_shape(tuple(shape), max_elements, RemoteProtocolError)
    item_size = WIRE_DTYPES[wire_dtype].itemsize
    if len(data) != count * item_size:
        raise _invalid(
            f"tensor of shape {shape} and dtype {wire_dtype} needs "
            f"{count * item_size} bytes, got {len(data)}"
        )
    array = np.frombuffer(data, dtype=WIRE_DTYPES[wire_dtype]).reshape(shape)
    if wire_dtype == "bfloat16":
        return bfloat16_bits_to_float32(array)
    return array


def float32_to_bfloat16_bits(array: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 values, rounded to nearest even."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    # Adding 0x7FFF plus the lowest kept bit rounds half to even; overflow
    # correctly rounds the largest finite values up to infinity.
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) >> 16
    quiet_nan = np.uint32(0x7FC0)
    return np.where(np.isnan(array), quiet_nan, rounded).astype(np.uint16)


def bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 bit patterns (exact: bfloat16 is a truncated float32)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _check_shape(
    shape: tuple[int, ...],
    max_elements: int,
    error: type[LocalProtocolError] | type[RemoteProtocolError],
) -> int:
    if len(shape) > MAX_RANK:
        raise error(f"tensor rank {len(shape)} is over {MAX_RANK}", ErrorCode.INVALID_FIELD)
    count = 1
    for dim in shape:
        count *= dim  # Python ints: a hostile shape cannot overflow this
        # Checking each dim too refuses shapes like (0, 2**70) that numpy cannot hold.
        if count > max_elements or dim > max_elements:
            raise error(
                f"tensor of shape {list(shape)} has over {max_elements} elements",
                ErrorCode.INVALID_FIELD,
            )
    return count


def _is_uint(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _invalid(message: str) -> RemoteProtocolError:
    return RemoteProtocolError(message, ErrorCode.INVALID_FIELD)
