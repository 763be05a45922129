"""Property tests: round trips and robustness of frames, CBOR, tensors and messages."""

import contextlib
import dataclasses
import math
from typing import Any

import cbor2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from exoquic.identity.node_id import node_id_from_public_key
from exoquic.wire import cbor
from exoquic.wire.errors import RemoteProtocolError
from exoquic.wire.framing import FrameDecoder, encode_frame
from exoquic.wire.messages import (
    MESSAGE_TYPES,
    ErrorMessage,
    Forward,
    Hello,
    Interest,
    Message,
    ModelProgress,
    PairConfirm,
    PairFinish,
    PairRequest,
    PairResponse,
    Ping,
    PlanProposal,
    PlanReady,
    Pong,
    Release,
    RequestFailed,
    TokenResult,
    decode_message,
    encode_message,
)
from exoquic.wire.tensors import decode_tensor, encode_tensor

MAX_FRAME = 256


def feed_in_chunks(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[bytes]:
    frames, start = [], 0
    for end in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        decoder.feed(data[start:end] if end > start else b"")
        start = max(start, end)
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    return frames


@given(st.lists(st.binary(max_size=MAX_FRAME), max_size=8), st.lists(st.integers(0, 10_000)))
def test_frames_survive_any_split(payloads: list[bytes], cuts: list[int]) -> None:
    data = b"".join(encode_frame(p, max_frame_size=MAX_FRAME) for p in payloads)
    decoder = FrameDecoder(MAX_FRAME)
    assert feed_in_chunks(decoder, data, cuts) == payloads
    decoder.end_of_stream()


@given(st.binary(max_size=2048), st.lists(st.integers(0, 10_000), max_size=8))
def test_frame_decoder_on_garbage_only_raises_remote_errors(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(MAX_FRAME)
    try:
        frames = feed_in_chunks(decoder, data, cuts)
        decoder.end_of_stream()
    except RemoteProtocolError:
        return
    assert all(len(f) <= MAX_FRAME for f in frames)
    assert sum(4 + len(f) for f in frames) == len(data)


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64 - 1)
    | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)  # fmt: skip


@given(plain)
def test_cbor_round_trip_and_canonical(value: Any) -> None:
    data = cbor.dumps(value)
    assert cbor.loads(data) == value
    assert cbor.dumps(cbor.loads(data)) == data


@given(plain)
def test_cbor_item_cap_counts_exactly_what_decoding_builds(value: Any) -> None:
    data = cbor.dumps(value)
    items = cbor.count_items(value, 10_000)
    assert cbor.loads(data, max_items=items) == value
    if len(data) > items - 1:  # else a shorter encoding cannot hold more items
        with pytest.raises(RemoteProtocolError, match="items"):
            cbor.loads(data, max_items=items - 1)


@given(st.binary(max_size=512), st.integers(0, 64))
def test_cbor_item_cap_on_garbage_only_raises_remote_errors(data: bytes, cap: int) -> None:
    with contextlib.suppress(RemoteProtocolError):
        cbor.dumps(cbor.loads(data, max_items=cap))


@given(st.binary(max_size=512))
def test_cbor_on_garbage_only_raises_remote_errors(data: bytes) -> None:
    try:
        value = cbor.loads(data)
    except RemoteProtocolError:
        return
    cbor.dumps(value)  # whatever decodes is plain data that encodes again


arrays = st.sampled_from([np.float16, np.float32, np.int32]).flatmap(
    lambda dtype: hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, max_side=6))
)


@given(arrays)
def test_tensor_round_trip_is_bit_exact(array: np.ndarray) -> None:
    decoded = decode_tensor(encode_tensor(array))
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert decoded.tobytes() == np.ascontiguousarray(array).tobytes()


finite32 = hnp.arrays(
    np.float32,
    hnp.array_shapes(max_dims=2, max_side=8),
    elements=st.floats(-(2.0**120), 2.0**120, width=32, allow_subnormal=False),
)


@given(finite32)
def test_bfloat16_is_within_half_an_ulp_and_idempotent(array: np.ndarray) -> None:
    once = decode_tensor(encode_tensor(array, "bfloat16"))
    assert np.all(np.abs(once - array) <= np.abs(array) * 2**-8)
    twice = decode_tensor(encode_tensor(once, "bfloat16"))
    assert twice.tobytes() == once.tobytes()


@given(st.dictionaries(st.sampled_from(["dtype", "shape", "data", "x"]), plain, max_size=4))
def test_tensor_decoding_of_junk_only_raises_remote_errors(value: dict[str, Any]) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_tensor(value)


u64 = st.integers(0, 2**64 - 1)
u32 = st.integers(0, 2**32 - 1)
request_id = st.text(st.characters(codec="ascii", categories=["L", "N", "P"]), min_size=1,
                     max_size=128)  # fmt: skip
name = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=64)
keys = st.binary(min_size=32, max_size=32)
tensor = st.one_of(
    hnp.arrays(np.int32, st.tuples(st.integers(1, 8))),
    hnp.arrays(st.sampled_from([np.float16, np.float32]),
               st.tuples(st.integers(1, 4), st.integers(1, 8))),
)  # fmt: skip


@st.composite
def model_progress(draw: st.DrawFn) -> ModelProgress:
    """Valid ModelProgress: counts within their totals, an error only when failed."""
    phase = draw(st.sampled_from(["downloading", "loading", "ready", "failed"]))
    total, files_total = draw(u64), draw(u32)
    return ModelProgress(
        draw(request_id), phase, draw(st.integers(0, total)), total,
        draw(st.integers(0, files_total)), files_total, draw(u64),
        draw(st.text(max_size=50)) if phase == "failed" else "",
    )  # fmt: skip


node_id = keys.map(node_id_from_public_key)

MESSAGE_STRATEGIES: dict[str, st.SearchStrategy[Message]] = {
    "hello": st.builds(Hello, u32, node_id, name, u64, request_id, st.none() | u64,
                       st.dictionaries(name, plain, max_size=4), st.booleans()),
    "interest": st.builds(Interest, st.booleans()),
    "ping": st.builds(Ping, u64),
    "pong": st.builds(Pong, u64),
    "error": st.builds(ErrorMessage, st.integers(0, 2**62 - 1), st.text(max_size=50)),
    "forward": st.builds(Forward, request_id, u64, u32, tensor, node_id, u32,
                         st.none() | st.dictionaries(name, plain, max_size=4)),
    "token": st.builds(TokenResult, request_id, u32),
    "release": st.builds(Release, request_id),
    "request_failed": st.builds(RequestFailed, request_id, st.text(max_size=50), st.booleans()),
    "plan_proposal": st.builds(PlanProposal, st.fixed_dictionaries(
        {"assignments": st.lists(st.dictionaries(name, u32, max_size=3), max_size=3)})),
    "plan_ready": st.builds(PlanReady, u64, node_id),
    "model_progress": model_progress(),
    "pair_request": st.builds(PairRequest, keys, name),
    "pair_response": st.builds(PairResponse, keys, name, st.binary(min_size=33, max_size=33)),
    "pair_finish": st.builds(PairFinish, st.binary(min_size=33, max_size=33), keys),
    "pair_confirm": st.builds(PairConfirm, keys),
}  # fmt: skip
"""Valid messages of every type the protocol registers, by type string."""

message_strategy = st.one_of(*MESSAGE_STRATEGIES.values())

# The registry as the protocol defines it: tests elsewhere register their own
# toy types, which have no strategy here.
PROTOCOL_TYPES = sorted(
    name for name, cls in MESSAGE_TYPES.items() if cls.__module__.startswith("exoquic.")
)


def test_every_registered_message_type_has_a_strategy() -> None:
    assert set(MESSAGE_STRATEGIES) == set(PROTOCOL_TYPES)


@given(message_strategy)
def test_messages_round_trip_byte_exact(message: Message) -> None:
    data = encode_message(message)
    assert encode_message(decode_message(data)) == data


@given(message_strategy, st.data())
def test_corrupted_messages_only_raise_remote_errors(message: Message, data: st.DataObject) -> None:
    encoded = bytearray(encode_message(message))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_message(bytes(encoded))
    except RemoteProtocolError:
        return
    encode_message(decoded)  # anything accepted is a valid message


@given(st.binary(max_size=512))
def test_message_decoding_of_garbage_only_raises_remote_errors(data: bytes) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_message(data)


# What a hostile or buggy peer may put in any field: every plain CBOR type,
# with the values that break careless checks (unhashable lists and maps in a
# set-membership test, bools posing as ints, NaN and infinities, negative and
# 64-bit-edge ints, bignums past 64 bits that strict CBOR refuses) and values
# that are valid for some field so that cross-field checks run too.
EDGE_VALUES = [
    0, 1, -1, 2**32 - 1, 2**32, 2**62 - 1, 2**62, 2**63, 2**64 - 1, -(2**64), 2**64, -(2**70),
    0.0, -0.0, 0.5, 2.0, 1e308, math.nan, math.inf, -math.inf, True, False, None,
    "", " ", "x", "stop", "length", "downloading", "loading", "ready", "failed",
    "exq-0000-0000-0000-0000-0", bytes(32), bytes(33), [], {}, [[]], {"": {}},
    {"dtype": "int32", "shape": [1], "data": bytes(4)},
    {"dtype": "float32", "shape": [1, 0], "data": b""},
    {"dtype": ["int32"], "shape": 1, "data": "x"},
    {"assignments": []}, {"assignments": {}},
]  # fmt: skip
hostile = st.recursive(
    st.sampled_from(EDGE_VALUES) | st.none() | st.booleans()
    | st.integers(-(2**64), 2**64 - 1) | st.floats() | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)  # fmt: skip


def decode_or_refuse(data: bytes, type_name: str) -> None:
    """decode_message may only refuse `data` with RemoteProtocolError; what it
    accepts must be a valid message of `type_name` that round-trips."""
    try:
        decoded = decode_message(data)
    except RemoteProtocolError:
        return
    assert type(decoded) is MESSAGE_TYPES[type_name]
    encoded = encode_message(decoded)  # anything accepted is a valid message
    assert encode_message(decode_message(encoded)) == encoded


def valid_body(data: st.DataObject, type_name: str) -> dict[str, Any]:
    message = data.draw(MESSAGE_STRATEGIES[type_name])
    assert type(message) is MESSAGE_TYPES[type_name]
    body: dict[str, Any] = cbor2.loads(encode_message(message))
    return body


FIELDS = [(t, f.name) for t in PROTOCOL_TYPES for f in dataclasses.fields(MESSAGE_TYPES[t])]  # type: ignore[arg-type]


@pytest.mark.parametrize(("type_name", "field_name"), FIELDS, ids=[f"{t}.{f}" for t, f in FIELDS])
@settings(max_examples=40)
@given(data=st.data())
def test_any_value_in_any_field_only_raises_remote_errors(
    type_name: str, field_name: str, data: st.DataObject
) -> None:
    body = valid_body(data, type_name)
    body[field_name] = data.draw(hostile, label=field_name)
    decode_or_refuse(cbor2.dumps(body, canonical=True), type_name)


@pytest.mark.parametrize("type_name", PROTOCOL_TYPES)
@settings(max_examples=50)
@given(data=st.data())
def test_any_values_in_several_fields_only_raise_remote_errors(
    type_name: str, data: st.DataObject
) -> None:
    body = valid_body(data, type_name)
    names = sorted(f.name for f in dataclasses.fields(MESSAGE_TYPES[type_name]))  # type: ignore[arg-type]
    for field_name in data.draw(st.sets(st.sampled_from(names), min_size=1), label="fields"):
        body[field_name] = data.draw(hostile, label=field_name)
    decode_or_refuse(cbor2.dumps(body, canonical=True), type_name)
