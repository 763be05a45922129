"""Property tests: round trips and robustness of frames, CBOR, tensors and messages."""

import contextlib
from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from exoquic.identity.node_id import node_id_from_public_key
from exoquic.wire import cbor
from exoquic.wire.errors import RemoteProtocolError
from exoquic.wire.framing import FrameDecoder, encode_frame
from exoquic.wire.messages import (
    ErrorMessage,
    Forward,
    Hello,
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


message_strategy = st.one_of(
    st.builds(Hello, u32, keys.map(node_id_from_public_key), name,
              st.dictionaries(name, plain, max_size=4)),
    st.builds(Ping, u64),
    st.builds(Pong, u64),
    st.builds(ErrorMessage, st.integers(0, 2**62 - 1), st.text(max_size=50)),
    st.builds(Forward, request_id, u64, u32, tensor, st.floats(0, 2), st.floats(0.01, 1),
              u32, st.none() | u64, st.integers(1, 2**32 - 1), u32,
              st.none() | keys.map(node_id_from_public_key)),
    st.builds(TokenResult, request_id, u32, st.sampled_from([None, "stop", "length"])),
    st.builds(Release, request_id),
    st.builds(RequestFailed, request_id, st.text(max_size=50), st.booleans()),
    st.builds(PlanProposal, st.fixed_dictionaries(
        {"assignments": st.lists(st.dictionaries(name, u32, max_size=3), max_size=3)})),
    st.builds(PlanReady, u64, keys.map(node_id_from_public_key)),
    st.builds(PairRequest, keys, name),
    st.builds(PairResponse, keys, name, st.binary(min_size=33, max_size=33)),
    st.builds(PairFinish, st.binary(min_size=33, max_size=33), keys),
    st.builds(PairConfirm, keys),
    model_progress(),
)  # fmt: skip


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


PROGRESS_FIELDS = ("model", "phase", "done_bytes", "total_bytes", "files_done", "files_total",
                   "bytes_per_second", "error")  # fmt: skip


near_valid = plain | st.sampled_from(["failed", "ready", "", "m", 0, 1, 2**64 - 1])


@given(st.fixed_dictionaries({name: near_valid for name in PROGRESS_FIELDS}))
def test_model_progress_with_any_field_values_only_raises_remote_errors(
    fields: dict[str, Any],
) -> None:
    data = cbor.dumps({"type": "model_progress", "v": 1, **fields})
    try:
        decoded = decode_message(data)
    except RemoteProtocolError:
        return
    assert isinstance(decoded, ModelProgress)
