"""Messages: round trips of every type, the wire form, and what decoding refuses."""

import time
from dataclasses import dataclass, fields
from typing import Any

import cbor2
import numpy as np
import pytest

from exoquic.wire.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from exoquic.wire.messages import (
    MAX_DEVICE_ITEMS,
    MESSAGE_TYPES,
    PROTOCOL_VERSION,
    Forward,
    Hello,
    Message,
    ModelProgress,
    Ping,
    TokenResult,
    check_uint,
    decode_message,
    encode_message,
    register,
)
from wire.message_examples import NODE_ID, all_examples


def same(a: Message, b: Message) -> bool:
    if type(a) is not type(b):
        return False
    for f in fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray):
            if x.dtype != y.dtype or not np.array_equal(x, y):
                return False
        elif x != y or type(x) is not type(y):
            return False
    return True


@pytest.mark.parametrize("message", all_examples(), ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    data = encode_message(message)
    decoded = decode_message(data)
    assert same(decoded, message)
    assert encode_message(decoded) == data  # canonical: the same bytes again


def test_every_registered_type_has_an_example() -> None:
    covered = {type(m).TYPE for m in all_examples()}
    assert covered == set(MESSAGE_TYPES) - {"x-test-echo"}


def test_wire_form_is_a_flat_map_with_type_and_version() -> None:
    assert cbor2.loads(encode_message(Ping(7))) == {"type": "ping", "v": 1, "nonce": 7}


def test_forward_tensor_wire_form() -> None:
    forward = Forward("r", 1, 0, np.array([5, 6], np.int32), NODE_ID, sampling={"seed": 5})
    body = cbor2.loads(encode_message(forward))
    assert body["tensor"] == {"dtype": "int32", "shape": [2], "data": b"\x05\0\0\0\x06\0\0\0"}
    assert body["sampling"] == {"seed": 5} and body["origin"] == NODE_ID


def test_forward_as_bfloat16() -> None:
    hidden = np.array([[1.0, 2.5, -3.0]], np.float32)
    data = encode_message(Forward("r", 1, 0, hidden, NODE_ID), bfloat16=True)
    assert cbor2.loads(data)["tensor"]["dtype"] == "bfloat16"
    decoded = decode_message(data)
    assert isinstance(decoded, Forward)
    np.testing.assert_array_equal(decoded.tensor, hidden)
    # token ids are never rounded
    tokens = encode_message(Forward("r", 1, 0, np.array([7], np.int32), NODE_ID), bfloat16=True)
    assert cbor2.loads(tokens)["tensor"]["dtype"] == "int32"


def raw(type_name: str, **fields: Any) -> bytes:
    """A message of `type_name` at the version this node speaks (1 for unknown types)."""
    cls = MESSAGE_TYPES.get(type_name)
    return cbor2.dumps({"type": type_name, "v": cls.VERSION if cls else 1, **fields})


def raw_token(**fields: Any) -> bytes:
    return cbor2.dumps({"type": "token", "v": TokenResult.VERSION, **fields})


def raw_forward(**fields: Any) -> bytes:
    return cbor2.dumps({"type": "forward", "v": Forward.VERSION, **fields})


def ping_version(version: object) -> bytes:
    return cbor2.dumps({"type": "ping", "v": version, "nonce": 1})


TOKENS = {"dtype": "int32", "shape": [1], "data": b"\x01\0\0\0"}
PROGRESS = dict(model="org/model", phase="downloading", done_bytes=1, total_bytes=2,
                files_done=0, files_total=1, bytes_per_second=0, error="")  # fmt: skip


FORWARD = dict(request_id="r", plan_version=1, start_position=0, tensor=TOKENS,
               origin=NODE_ID, step=0, sampling={}, logprobs=None, score=None,
               reuse_from=None, reuse_length=0, tokens=[])  # fmt: skip
TOKEN = dict(request_id="r", token_id=1, logprob=None, top_logprobs=None, prompt_logprobs=None)
FORWARD_V2 = dict(request_id="r", plan_version=1, start_position=0, tensor=TOKENS,
                  temperature=0.0, top_p=1.0, top_k=0, seed=None, max_tokens=1,
                  step=0, origin=None)  # fmt: skip


def test_token_logprobs_arrive_as_tuples() -> None:
    message = decode_message(raw_token(**{**TOKEN, "logprob": -0.5, "top_logprobs": [[3, -0.1]]}))
    assert message == TokenResult("r", 1, -0.5, ((3, -0.1),))


def test_raw_forward_is_valid() -> None:
    assert isinstance(decode_message(raw_forward(**FORWARD)), Forward)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_older_forward_versions_are_refused(version: int) -> None:
    with pytest.raises(RemoteProtocolError, match=f"version {version}") as caught:
        decode_message(cbor2.dumps({"type": "forward", "v": version, **FORWARD_V2}))
    assert caught.value.error_code == ErrorCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize(
    "fields",
    [
        {"tokens": [1, 2]},  # more ids than the tensor's one row
        {"tokens": [-1]},
        {"tokens": [True]},
        {"tokens": {"1": 2}},
    ],
)
def test_forward_tokens_are_checked(fields: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError) as caught:
        decode_message(raw_forward(**{**FORWARD, **fields}))
    assert caught.value.error_code == ErrorCode.INVALID_FIELD


def test_forward_tokens_decode_as_a_tuple() -> None:
    message = decode_message(raw_forward(**{**FORWARD, "tokens": [4]}))
    assert isinstance(message, Forward)
    assert message.tokens == (4,)


@pytest.mark.parametrize(
    ("type_name", "fields"),
    [
        ("forward", {k: v for k, v in FORWARD.items() if not k.startswith("reuse_")}),
        ("release", {"request_id": "r"}),
        ("request_failed", {"request_id": "r", "reason": "", "retryable": True}),
    ],
)
def test_messages_without_prefix_cache_fields_are_refused(
    type_name: str, fields: dict[str, Any]
) -> None:
    """A node from before the prefix cache sends the older versions: refused cleanly."""
    old = MESSAGE_TYPES[type_name].VERSION - 1
    with pytest.raises(RemoteProtocolError, match=f"version {old}") as caught:
        decode_message(cbor2.dumps({"type": type_name, "v": old, **fields}))
    assert caught.value.error_code == ErrorCode.UNSUPPORTED_VERSION


@pytest.mark.parametrize(
    ("sampling", "match"),
    [
        ([0.7], "a map of at most 64 fields"),
        ({"": 0.7}, "short text keys"),
        ({"x" * 65: 1}, "short text keys"),
        ({"logit_bias": list(range(5000))}, "at most 4096 CBOR items"),
    ],
)
def test_forward_sampling_is_a_bounded_map(sampling: object, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match) as caught:
        decode_message(raw_forward(**{**FORWARD, "sampling": sampling}))
    assert caught.value.error_code == ErrorCode.INVALID_FIELD


def test_forward_needs_its_origin() -> None:
    with pytest.raises(RemoteProtocolError, match=r"forward\.origin") as caught:
        decode_message(raw_forward(**{**FORWARD, "origin": None}))
    assert caught.value.error_code == ErrorCode.INVALID_FIELD


@pytest.mark.parametrize(
    ("data", "code", "match"),
    [
        (cbor2.dumps([1]), ErrorCode.MALFORMED_MESSAGE, "CBOR map"),
        (b"\xff", ErrorCode.MALFORMED_MESSAGE, "invalid CBOR"),
        (raw("ping", nonce=1) + b"\0", ErrorCode.MALFORMED_MESSAGE, "after the CBOR item"),
        (cbor2.dumps({"v": 1, "nonce": 1}), ErrorCode.UNKNOWN_MESSAGE, "None"),
        (raw("teleport"), ErrorCode.UNKNOWN_MESSAGE, "teleport"),
        (raw("v"), ErrorCode.UNKNOWN_MESSAGE, "'v'"),
        (ping_version(2), ErrorCode.UNSUPPORTED_VERSION, "version 2"),
        (ping_version(1.0), ErrorCode.UNSUPPORTED_VERSION, "version 1.0"),
        (ping_version(True), ErrorCode.UNSUPPORTED_VERSION, "version True"),
        (cbor2.dumps({"type": "ping", "nonce": 1}), ErrorCode.UNSUPPORTED_VERSION, "version None"),
        (raw("ping"), ErrorCode.INVALID_FIELD, "missing field 'nonce'"),
        (raw("ping", nonce=1, extra=2), ErrorCode.INVALID_FIELD, "unknown field 'extra'"),
        (raw("ping", nonce=-1), ErrorCode.INVALID_FIELD, "ping.nonce"),
        (raw("ping", nonce=True), ErrorCode.INVALID_FIELD, "ping.nonce"),
        (raw("ping", nonce=1.0), ErrorCode.INVALID_FIELD, "ping.nonce"),
        (raw("ping", nonce="1"), ErrorCode.INVALID_FIELD, "ping.nonce"),
        (raw("error", code=2**62, reason=""), ErrorCode.INVALID_FIELD, "error.code"),
        (raw("error", code=1, reason="x" * 1025), ErrorCode.INVALID_FIELD, "error.reason"),
        (raw("release", request_id="", keep=0), ErrorCode.INVALID_FIELD, "request_id"),
        (raw("release", request_id="a\nb", keep=0), ErrorCode.INVALID_FIELD, "request_id"),
        (raw("release", request_id="x" * 129, keep=0), ErrorCode.INVALID_FIELD, "request_id"),
        (raw("release", request_id="r", keep=-1), ErrorCode.INVALID_FIELD, "keep"),
        (raw("request_failed", request_id="r", reason="", retryable=True, prefix_miss=1),
         ErrorCode.INVALID_FIELD, "prefix_miss"),
        (raw_token(**{**TOKEN, "token_id": 2**32}), ErrorCode.INVALID_FIELD, "token_id"),
        (raw_token(**TOKEN, finish_reason=None),
         ErrorCode.INVALID_FIELD, "unknown field 'finish_reason'"),
        (raw_token(request_id="r", token_id=1), ErrorCode.INVALID_FIELD, "missing field 'logprob'"),
        (raw_token(**{**TOKEN, "logprob": 0.5}), ErrorCode.INVALID_FIELD, "logprob"),
        (raw_token(**{**TOKEN, "logprob": -1}), ErrorCode.INVALID_FIELD, "logprob"),
        (raw_token(**{**TOKEN, "logprob": float("nan")}), ErrorCode.INVALID_FIELD, "logprob"),
        (raw_token(**{**TOKEN, "top_logprobs": [[1, -0.5]] * 21}),
         ErrorCode.INVALID_FIELD, "top_logprobs"),
        (raw_token(**{**TOKEN, "top_logprobs": [[1, -0.5, 2]]}),
         ErrorCode.INVALID_FIELD, "top_logprobs"),
        (raw_token(**{**TOKEN, "top_logprobs": [[-1, -0.5]]}),
         ErrorCode.INVALID_FIELD, "top_logprobs"),
        (raw_token(**{**TOKEN, "top_logprobs": {"1": -0.5}}),
         ErrorCode.INVALID_FIELD, "top_logprobs"),
        (raw_token(**{**TOKEN, "prompt_logprobs": [[-0.5, [[1, -0.5]] * 6]]}),
         ErrorCode.INVALID_FIELD, "prompt_logprobs"),
        (raw_token(**{**TOKEN, "prompt_logprobs": [[0.5, []]]}),
         ErrorCode.INVALID_FIELD, "prompt_logprobs"),
        (raw_token(**{**TOKEN, "prompt_logprobs": [[-0.5, []]] * 257}),
         ErrorCode.INVALID_FIELD, "prompt_logprobs"),
        # Unhashable values once reached a set-membership test (TypeError).
        (raw("model_progress", **{**PROGRESS, "phase": ["ready"]}),
         ErrorCode.INVALID_FIELD, "phase"),
        (raw("model_progress", **{**PROGRESS, "phase": {"ready": 1}}),
         ErrorCode.INVALID_FIELD, "phase"),
        (raw("model_progress", **{**PROGRESS, "phase": False}),
         ErrorCode.INVALID_FIELD, "phase"),
        (raw("pair_request", public_key=bytes(31), name="x"), ErrorCode.INVALID_FIELD, "32"),
        (raw("pair_request", public_key=bytes(32), name=" x"), ErrorCode.INVALID_FIELD, "name"),
        (raw("pair_confirm", confirm="00" * 32), ErrorCode.INVALID_FIELD, "confirm"),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)  # fmt: skip
def test_invalid_messages_are_the_peers_fault(data: bytes, code: ErrorCode, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        decode_message(data)
    assert info.value.error_code == code


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"start_position": 2**32}, "start_position"),
        ({"plan_version": "1"}, "plan_version"),
        ({"tensor": {"dtype": "float32", "shape": [3], "data": bytes(12)}}, "tensor"),
        ({"tensor": {"dtype": "int32", "shape": [1, 1], "data": bytes(4)}}, "tensor"),
        ({"tensor": {"dtype": "int32", "shape": [0], "data": b""}}, "tensor"),
        ({"tensor": [1, 2, 3]}, "tensor"),
        ({"step": -1}, "step"),
        ({"origin": "exq-0000"}, "origin"),
        ({"reuse_length": 3}, "0 without reuse_from"),
        ({"reuse_from": "a", "reuse_length": 0}, "reuse_length"),
        ({"reuse_from": "a", "reuse_length": 3}, "reuse_length"),  # not its start position
        ({"reuse_from": "", "start_position": 3, "reuse_length": 3}, "reuse_from"),
        ({"logprobs": 21}, "logprobs"),
        ({"logprobs": True}, "logprobs"),
        ({"logprobs": 1, "score": [1, 2]}, "score"),  # more than the tensor's one position
        ({"logprobs": 1, "score": [-1]}, "score"),
        ({"logprobs": 6, "score": [1]}, "score"),
        ({"score": [1]}, "score"),  # score without logprobs
    ],
)
def test_invalid_forward_fields(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        decode_message(raw_forward(**{**FORWARD, **changes}))
    assert info.value.error_code == ErrorCode.INVALID_FIELD


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"node_id": "exq-0000"}, "node_id"),
        ({"node_id": NODE_ID.lower()}, "canonical"),
        ({"name": ""}, "name"),
        ({"device": {"": 1}}, "device"),
        ({"device": {f"k{i}": i for i in range(65)}}, "device"),
        ({"device": [1]}, "device"),
        ({"protocol_version": -1}, "protocol_version"),
    ],
)
def test_invalid_hello_fields(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode_message(cbor2.dumps(hello_body(**changes)))


def test_constructing_an_invalid_message_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError, match=r"ping\.nonce") as info:
        Ping(-1)
    assert info.value.error_code == ErrorCode.INVALID_FIELD
    with pytest.raises(LocalProtocolError, match="tensor"):
        Forward("r", 1, 0, np.ones(3, np.float64), NODE_ID)


def test_tensor_element_cap_is_configurable() -> None:
    data = encode_message(Forward("r", 1, 0, np.ones((4, 4), np.float32), NODE_ID))
    with pytest.raises(RemoteProtocolError, match="elements"):
        decode_message(data, max_tensor_elements=15)


@register
@dataclass(frozen=True)
class _Echo(Message):
    TYPE = "x-test-echo"
    VERSION = 3
    value: int

    def __post_init__(self) -> None:
        check_uint(self, "value", 9)


def test_adding_a_message_takes_a_dataclass_and_a_decorator() -> None:
    assert same(decode_message(encode_message(_Echo(4))), _Echo(4))
    with pytest.raises(RemoteProtocolError, match="version 1 is not supported"):
        decode_message(cbor2.dumps({"type": "x-test-echo", "v": 1, "value": 4}))


def test_registry_refuses_clashes_and_mutable_messages() -> None:
    with pytest.raises(ValueError, match="already taken"):
        register(dataclass(frozen=True)(type("Dup", (Message,), {"TYPE": "ping"})))

    class Mutable(Message):
        TYPE = "x-test-mutable"

    with pytest.raises(TypeError, match="frozen"):
        register(dataclass(Mutable))


def test_unregistered_message_cannot_be_sent() -> None:
    @dataclass(frozen=True)
    class Stray(Message):
        TYPE = "x-test-stray"

    with pytest.raises(LocalProtocolError, match="not a registered"):
        encode_message(Stray())


def raw_progress(**changes: Any) -> bytes:
    return raw("model_progress", **{**PROGRESS, **changes})


def test_model_progress_wire_form() -> None:
    assert cbor2.loads(encode_message(ModelProgress(**PROGRESS))) == {  # type: ignore[arg-type]
        "type": "model_progress", "v": 1, **PROGRESS
    }  # fmt: skip


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"model": ""}, "model"),
        ({"model": "m" * 257}, "model"),
        ({"model": "a\nb"}, "model"),
        ({"model": 7}, "model"),
        ({"phase": "paused"}, "phase"),
        ({"phase": ["ready"]}, "phase"),
        ({"phase": None}, "phase"),
        ({"done_bytes": 3}, "done_bytes"),  # over total_bytes
        ({"done_bytes": -1}, "done_bytes"),
        ({"done_bytes": 1.0}, "done_bytes"),
        ({"total_bytes": -1}, "total_bytes"),
        ({"total_bytes": "2"}, "total_bytes"),
        ({"files_done": 2}, "files_done"),  # over files_total
        ({"files_total": 2**32}, "files_total"),
        ({"bytes_per_second": -5}, "bytes_per_second"),
        ({"bytes_per_second": True}, "bytes_per_second"),
        ({"error": "x" * 1025, "phase": "failed"}, "error"),
        ({"error": "boom"}, "error"),  # an error while downloading
        ({"error": None, "phase": "failed"}, "error"),
    ],
)
def test_invalid_model_progress_fields(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match) as info:
        decode_message(raw_progress(**changes))
    assert info.value.error_code == ErrorCode.INVALID_FIELD


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({k: v for k, v in PROGRESS.items() if k != "error"}, ErrorCode.INVALID_FIELD),
        ({**PROGRESS, "node_id": NODE_ID}, ErrorCode.INVALID_FIELD),  # the sender is no field
    ],
    ids=["missing field", "unknown field"],
)
def test_model_progress_fields_are_exactly_these(body: dict[str, Any], code: ErrorCode) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        decode_message(raw("model_progress", **body))
    assert info.value.error_code == code


def test_model_progress_version_2_is_refused() -> None:
    data = cbor2.dumps({"type": "model_progress", "v": 2, **PROGRESS})
    with pytest.raises(RemoteProtocolError) as info:
        decode_message(data)
    assert info.value.error_code == ErrorCode.UNSUPPORTED_VERSION


def test_refused_values_are_shown_briefly() -> None:
    data = raw("model_progress", **{**PROGRESS, "phase": b"x" * (1 << 20)})
    with pytest.raises(RemoteProtocolError) as info:
        decode_message(data)
    assert len(str(info.value)) < 300
    with pytest.raises(LocalProtocolError, match="int of"):
        Ping(10**5000)  # repr() refuses ints of over 4300 digits


def test_building_a_bad_model_progress_is_our_bug() -> None:
    with pytest.raises(LocalProtocolError, match="done_bytes"):
        ModelProgress("m", "downloading", 5, 4, 0, 0, 0, "")


def hello_body(**changes: Any) -> dict[str, Any]:
    body = {"type": "hello", "v": Hello.VERSION, "protocol_version": PROTOCOL_VERSION,
            "node_id": NODE_ID, "name": "n", "instance": 1, "model": "m", "plan_version": None,
            "device": {}, "on_demand": False}  # fmt: skip
    return {**body, **changes}


def test_every_message_type_has_a_size_limit_that_its_examples_respect() -> None:
    for message in all_examples():
        assert len(encode_message(message)) <= type(message).MAX_SIZE
    assert MESSAGE_TYPES["hello"].MAX_SIZE == 64 << 10
    assert MESSAGE_TYPES["ping"].MAX_SIZE == 8 << 10


def test_oversized_message_is_refused_for_its_type() -> None:
    # A Ping padded past its 8 KiB inside a frame that a Forward could fill.
    data = cbor2.dumps({"type": "ping", "v": 1, "nonce": 1, "pad": b"x" * (8 << 10)})
    with pytest.raises(RemoteProtocolError, match=r"ping of .* over its 8192-byte limit") as caught:
        decode_message(data)
    assert caught.value.error_code == ErrorCode.FRAME_TOO_LARGE
    big = {"blob": b"x" * (64 << 10)}
    with pytest.raises(RemoteProtocolError, match=r"hello of .* over its 65536-byte limit"):
        decode_message(cbor2.dumps(hello_body(device=big)))
    with pytest.raises(LocalProtocolError, match="over its 65536-byte limit"):
        encode_message(Hello(PROTOCOL_VERSION, NODE_ID, "n", 1, "m", None, big))


def test_hello_device_is_bounded_in_items() -> None:
    many = {"list": list(range(MAX_DEVICE_ITEMS))}
    with pytest.raises(RemoteProtocolError, match="at most 1024 CBOR items") as caught:
        decode_message(cbor2.dumps(hello_body(device=many)))
    assert caught.value.error_code == ErrorCode.INVALID_FIELD
    fine = {"list": list(range(MAX_DEVICE_ITEMS - 3))}  # map, key, list: 3 more
    assert isinstance(decode_message(cbor2.dumps(hello_body(device=fine))), Hello)


def test_a_hello_of_four_million_items_is_refused_in_milliseconds() -> None:
    data = cbor2.dumps(hello_body(device={"junk": [0] * (4 << 20)}))
    started = time.perf_counter()
    with pytest.raises(RemoteProtocolError, match="items"):
        decode_message(data)
    assert time.perf_counter() - started < 0.05


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"instance": -1}, "hello.instance"),
        ({"instance": None}, "hello.instance"),
        ({"model": ""}, "hello.model"),
        ({"model": "m" * 257}, "hello.model"),
        ({"model": "a\nb"}, "hello.model"),
        ({"plan_version": -1}, "hello.plan_version"),
        ({"plan_version": "3"}, "hello.plan_version"),
        ({"device": [1]}, "hello.device"),
        ({"device": {"": 1}}, "hello.device"),
        ({"on_demand": 1}, "hello.on_demand"),
    ],
)
def test_hello_fields_are_typed_and_checked(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(RemoteProtocolError, match=field) as caught:
        decode_message(cbor2.dumps(hello_body(**changes)))
    assert caught.value.error_code == ErrorCode.INVALID_FIELD


def test_hello_version_1_and_its_capabilities_map_are_refused() -> None:
    old = {"type": "hello", "v": 1, "protocol_version": 1, "node_id": NODE_ID, "name": "n",
           "capabilities": {}}  # fmt: skip
    with pytest.raises(RemoteProtocolError, match="version 1") as caught:
        decode_message(cbor2.dumps(old))
    assert caught.value.error_code == ErrorCode.UNSUPPORTED_VERSION
    with pytest.raises(RemoteProtocolError, match="unknown field 'capabilities'"):
        decode_message(cbor2.dumps(hello_body(capabilities={})))
