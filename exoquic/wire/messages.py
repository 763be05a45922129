"""Wire messages: versioned frozen dataclasses, sent as one CBOR map per frame.

On the wire a message is a map holding its fields by name plus two reserved
keys, `"type"` (text) and `"v"` (its version), e.g.

    {"type": "ping", "v": 1, "nonce": 7}

Decoding is strict: an unknown type, an unsupported version, a missing or
unknown field, a field of the wrong type or out of range is a
RemoteProtocolError carrying the error code to close the connection with.

Adding a message: subclass `Message` as a frozen dataclass, set `TYPE`, check
every field in `__post_init__` with the helpers below (they raise
LocalProtocolError, which decoding turns into RemoteProtocolError), mark
numpy fields with `field(metadata=TENSOR)`, decorate with `@register`, and describe it
in docs/protocol.md.
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import numpy as np

from exoquic.identity.node_id import NodeIdError, is_valid_device_name, parse_node_id
from exoquic.wire import cbor
from exoquic.wire.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from exoquic.wire.framing import MAX_FRAME_SIZE
from exoquic.wire.tensors import MAX_TENSOR_ELEMENTS, decode_tensor, encode_tensor

PROTOCOL_VERSION = 6
"""The node protocol version nodes announce in `Hello` (over ALPN `exoquic/1`).
2: typed `Hello` fields, one `sampling` map in `Forward`. 3: log-probabilities
(`Forward` 4, `TokenResult` 3). 4: the prefix cache (`Forward` 5, `Release` 2,
`RequestFailed` 2). 5: the tokens so far for penalties and grammars (`Forward` 6).
6: rings of models loaded on demand (`Hello` 3, `Interest`)."""

MAX_ID_LENGTH = 128
MAX_REASON_LENGTH = 1024
MAX_MODEL_ID_LENGTH = 256
MAX_DEVICE_FIELDS = 64
MAX_DEVICE_ITEMS = 1024
MAX_SAMPLING_FIELDS = 64
MAX_SAMPLING_ITEMS = 4096  # room for a logit bias (a JSON schema is one text item)
MAX_TOP_LOGPROBS = 20  # alternatives per token (OpenAI's limit for chat's top_logprobs)
# Prompt positions one Forward may score, and alternatives for each (OpenAI's limit for
# text completions): 256 x 5 alternatives stay well inside cbor.MAX_ITEMS.
MAX_SCORED_POSITIONS = 256
MAX_SCORED_TOP = 5
U32 = (1 << 32) - 1
U64 = (1 << 64) - 1
QUIC_ERROR_CODE_MAX = (1 << 62) - 1

_RESERVED_KEYS = ("type", "v")


class Message:
    """Base of every wire message. Subclasses are frozen dataclasses.

    `MAX_SIZE` bounds the encoded message in bytes, for sender and receiver
    alike; every message also stays within `cbor.MAX_ITEMS` data items, and
    free-form fields carry their own item bounds.
    """

    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1
    MAX_SIZE: ClassVar[int] = 8 << 10  # enough for 1024 characters of 4-byte UTF-8


_M = TypeVar("_M", bound=type[Message])
_REGISTRY: dict[str, type[Message]] = {}

TENSOR: Mapping[str, Any] = MappingProxyType({"tensor": True})
"""Field metadata of numpy array fields: `x: np.ndarray = field(metadata=TENSOR)`."""

MESSAGE_TYPES: Mapping[str, type[Message]] = MappingProxyType(_REGISTRY)
"""Every registered message class by its type string (read-only)."""


def register(cls: _M) -> _M:
    """Class decorator: make `cls` known to `decode_message` under `cls.TYPE`."""
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:
        raise TypeError(f"{cls.__name__} must be a frozen dataclass")
    if cls.TYPE in _REGISTRY or cls.TYPE in _RESERVED_KEYS:
        raise ValueError(f"message type {cls.TYPE!r} is already taken")
    if any(f.name in _RESERVED_KEYS for f in dataclasses.fields(cls)):
        raise ValueError(f"{cls.__name__} uses a reserved field name")
    _REGISTRY[cls.TYPE] = cls
    return cls


def encode_message(message: Message, *, bfloat16: bool = False) -> bytes:
    """The canonical CBOR bytes of `message` (the payload of one frame).

    With `bfloat16`, float32 tensors are sent as bfloat16 (half the bytes;
    the receiver gets float32 back).
    """
    if _REGISTRY.get(getattr(message, "TYPE", "")) is not type(message):
        raise LocalProtocolError(f"{type(message).__name__} is not a registered message")
    body: dict[str, Any] = {"type": message.TYPE, "v": message.VERSION}
    for item in dataclasses.fields(message):  # type: ignore[arg-type]
        value = getattr(message, item.name)
        if item.metadata.get("tensor"):
            dtype = "bfloat16" if bfloat16 and value.dtype == np.float32 else None
            value = encode_tensor(value, dtype)
        body[item.name] = value
    encoded = cbor.dumps(body)
    if len(encoded) > message.MAX_SIZE:
        raise LocalProtocolError(
            f"{message.TYPE} of {len(encoded)} bytes is over its {message.MAX_SIZE}-byte limit",
            ErrorCode.FRAME_TOO_LARGE,
        )
    return encoded


def decode_message(data: bytes, *, max_tensor_elements: int = MAX_TENSOR_ELEMENTS) -> Message:
    """Parse and validate one message; RemoteProtocolError for anything invalid."""
    body = cbor.loads(data)
    if not isinstance(body, dict):
        raise RemoteProtocolError("a message must be a CBOR map", ErrorCode.MALFORMED_MESSAGE)
    type_name, version = body.pop("type", None), body.pop("v", None)
    cls = _REGISTRY.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {type_name!r}", ErrorCode.UNKNOWN_MESSAGE)
    if not _is_int(version) or version != cls.VERSION:
        raise RemoteProtocolError(
            f"{cls.TYPE} version {version!r} is not supported (this node speaks "
            f"version {cls.VERSION})",
            ErrorCode.UNSUPPORTED_VERSION,
        )
    if len(data) > cls.MAX_SIZE:
        raise RemoteProtocolError(
            f"{cls.TYPE} of {len(data)} bytes is over its {cls.MAX_SIZE}-byte limit",
            ErrorCode.FRAME_TOO_LARGE,
        )
    return _build(cls, body, max_tensor_elements)


def _build(cls: type[Message], body: dict[str, Any], max_tensor_elements: int) -> Message:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown, missing = body.keys() - fields.keys(), fields.keys() - body.keys()
    if unknown or missing:
        problems = [f"unknown field {name!r}" for name in sorted(unknown)]
        problems += [f"missing field {name!r}" for name in sorted(missing)]
        raise RemoteProtocolError(f"{cls.TYPE}: {', '.join(problems)}", ErrorCode.INVALID_FIELD)
    for name, spec in fields.items():
        if spec.metadata.get("tensor"):
            body[name] = decode_tensor(body[name], max_elements=max_tensor_elements)
    try:
        return cls(**body)
    except LocalProtocolError as exc:
        # The peer sent what we would have refused to send: its fault.
        raise RemoteProtocolError(str(exc), exc.error_code) from None


# --- field checks (raise LocalProtocolError with INVALID_FIELD) -----------------


def _is_logprob(value: object) -> bool:
    """A log-probability: a float (not an int or bool) that is <= 0, -inf allowed."""
    return isinstance(value, float) and not math.isnan(value) and value <= 0.0


def check_uint(message: Message, name: str, maximum: int = U64) -> None:
    value = getattr(message, name)
    if not _is_int(value) or not 0 <= value <= maximum:
        raise _invalid(message, name, f"an integer in 0..{maximum}", value)
    object.__setattr__(message, name, int(value))  # an IntEnum member becomes a plain int


def check_text(
    message: Message, name: str, max_length: int, *, min_length: int = 1, printable: bool = False
) -> None:
    value = getattr(message, name)
    if (
        not isinstance(value, str)
        or not min_length <= len(value) <= max_length
        or (printable and not value.isprintable())
    ):
        kind = "printable text" if printable else "text"
        raise _invalid(message, name, f"{kind} of {min_length}..{max_length} characters", value)


def check_bool(message: Message, name: str) -> None:
    value = getattr(message, name)
    if not isinstance(value, bool):
        raise _invalid(message, name, "true or false", value)


def check_bytes(message: Message, name: str, size: int) -> None:
    value = getattr(message, name)
    if not isinstance(value, bytes) or len(value) != size:
        raise _invalid(message, name, f"{size} bytes", value)


def check_choice(message: Message, name: str, choices: frozenset[str]) -> None:
    """One of the text values `choices`."""
    value = getattr(message, name)
    # Test the type first: a list or map from the peer is unhashable, and a
    # set-membership test on it raises TypeError.
    if not isinstance(value, str) or value not in choices:
        raise _invalid(message, name, f"one of {sorted(choices)}", value)


def check_items(message: Message, name: str, max_items: int) -> None:
    """A free-form CBOR field of at most `max_items` data items (see `cbor.count_items`)."""
    value = getattr(message, name)
    if cbor.count_items(value, max_items) > max_items:
        raise _invalid(message, name, f"at most {max_items} CBOR items", value)


def check_map(message: Message, name: str, max_fields: int, max_items: int) -> None:
    """A map of at most `max_fields` short text keys and `max_items` CBOR items."""
    value = getattr(message, name)
    if not isinstance(value, dict) or len(value) > max_fields:
        raise _invalid(message, name, f"a map of at most {max_fields} fields", value)
    if not all(isinstance(key, str) and 0 < len(key) <= 64 for key in value):
        raise _invalid(message, name, "a map with short text keys", value)
    check_items(message, name, max_items)


def check_name(message: Message, name: str) -> None:
    if not is_valid_device_name(getattr(message, name)):
        value = getattr(message, name)
        raise _invalid(message, name, "1-64 printable characters, no outer spaces", value)


def check_node_id(message: Message, name: str) -> None:
    """A node id in canonical text form (as `identity.node_id` writes it)."""
    check_text(message, name, MAX_ID_LENGTH)
    value = getattr(message, name)
    try:
        canonical = parse_node_id(value)
    except NodeIdError as exc:
        raise _invalid(message, name, "a node id", value) from exc
    if canonical != value:
        raise _invalid(message, name, f"in canonical form {canonical!r}", value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _ShortRepr(reprlib.Repr):
    """A bounded repr of refused values: a full repr of a peer's 64 MiB byte
    string or list would cost time and memory for a message nobody reads whole."""

    def __init__(self) -> None:
        super().__init__()  # keyword arguments need Python 3.12
        self.maxlevel, self.maxlist, self.maxdict = 2, 6, 6
        self.maxstring = self.maxother = self.maxlong = 60

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 256:  # repr() refuses ints of over 4300 digits (ValueError)
            return f"<int of {x.bit_length()} bits>"
        return super().repr_int(x, level)


_SHORT_REPR = _ShortRepr()


def _invalid(message: Message, name: str, expected: str, value: Any) -> LocalProtocolError:
    shown = _SHORT_REPR.repr(value)
    return LocalProtocolError(
        f"{message.TYPE}.{name} must be {expected}, not {shown}", ErrorCode.INVALID_FIELD
    )


# --- node protocol (ALPN exoquic/1) ---------------------------------------------


@register
@dataclass(frozen=True)
class Hello(Message):
    """First message on a connection, each way: who I am and what I can do.

    `node_id` must be the id of the key the peer presented in TLS (the link
    checks this). `instance` tells restarts apart (a larger value is a newer
    process of the same node); `model` is the model id the node serves (peers
    of another model do not link); `plan_version` is the newest plan version
    it has seen (None: none yet), so that a coordinator never reuses one;
    `device` describes its memory, chip and engine (a map, read by
    `topology.DeviceCapabilities.from_dict`; only its size is checked here).
    `on_demand` is true on the links of a ring of a model loaded on demand: a
    node that does not serve `model` yet but has it cached may start serving
    it and dial back (see docs/ring.md); a node's own model's ring is joined
    only by nodes serving that model.

    Version 2 replaced version 1's free-form `capabilities` map with these
    fields; version 3 added `on_demand`.
    """

    TYPE = "hello"
    VERSION = 3
    MAX_SIZE = 64 << 10
    protocol_version: int
    node_id: str
    name: str
    instance: int
    model: str
    plan_version: int | None
    device: dict[str, Any]
    on_demand: bool = False

    def __post_init__(self) -> None:
        check_uint(self, "protocol_version", U32)
        check_node_id(self, "node_id")
        check_name(self, "name")
        check_uint(self, "instance")
        check_text(self, "model", MAX_MODEL_ID_LENGTH, printable=True)
        if self.plan_version is not None:
            check_uint(self, "plan_version")
        check_map(self, "device", MAX_DEVICE_FIELDS, MAX_DEVICE_ITEMS)
        check_bool(self, "on_demand")


@register
@dataclass(frozen=True)
class Ping(Message):
    """Asks for a `Pong` with the same nonce (liveness and round-trip time)."""

    TYPE = "ping"
    nonce: int

    def __post_init__(self) -> None:
        check_uint(self, "nonce")


@register
@dataclass(frozen=True)
class Pong(Message):
    """The answer to `Ping`, echoing its nonce."""

    TYPE = "pong"
    nonce: int

    def __post_init__(self) -> None:
        check_uint(self, "nonce")


@register
@dataclass(frozen=True)
class ErrorMessage(Message):
    """Tells the peer why something failed before the stream or connection is closed.

    `code` is an `ErrorCode` (or any QUIC application error code).
    """

    TYPE = "error"
    code: int
    reason: str

    def __post_init__(self) -> None:
        check_uint(self, "code", QUIC_ERROR_CODE_MAX)
        check_text(self, "reason", MAX_REASON_LENGTH, min_length=0)


@register
@dataclass(frozen=True, eq=False)  # numpy arrays have no single truth value for ==
class Forward(Message):
    """Run the next shard on `tensor` for one request.

    `tensor` is int32 token ids `(T,)` for the first shard, else the float
    hidden state `(T, hidden)` from the previous shard; it covers positions
    `start_position .. start_position + T - 1` of the request. `plan_version`
    names the partition the sender used. `origin` is the node holding the
    request, to which the last shard sends its `TokenResult`. `step` is the
    index of the token this pass produces (0 for the first generated token).

    `sampling` carries the request's sampling parameters (a map of
    `engines.sampling.SamplingParams` fields by name, validated by the last
    shard; new optional parameters need no new message). It travels with the
    prompt (step 0) and is None on later steps: the last shard keeps one
    sampler per request for the request's life.

    `logprobs`, when not None, asks the last shard for the sampled token's
    log-probability and that many best alternatives (0..MAX_TOP_LOGPROBS) in
    its `TokenResult`; it travels with every step (the last shard keeps no
    state for it). `score` (a prompt's chunks, with `logprobs`) lists the
    prompt token that follows each of the tensor's first `len(score)`
    positions: the last shard then runs its head on every position and
    returns those tokens' log-probabilities in `TokenResult.prompt_logprobs`.

    `reuse_from`, on a prompt's first `Forward` only, names an earlier request
    whose kept caches (see `Release.keep`) hold this request's first
    `reuse_length` positions: each node copies them into the request's cache
    before running `tensor` (which then starts at `reuse_length`), or answers
    `RequestFailed` with `prefix_miss` when it no longer holds them.

    `tokens` holds the token ids of this message's positions, sent only when
    the request's draws depend on the tokens so far (a penalty or a grammar),
    so that the last shard, which sees hidden states, knows the prompt and
    each generated token as the origin fed it.

    Version 3 replaced version 2's `temperature`, `top_p`, `top_k`, `seed`
    and (never used) `max_tokens` with `sampling`, and made `origin` required.
    Version 4 added `logprobs` and `score`; version 5 `reuse_from` and
    `reuse_length`; version 6 `tokens`.
    """

    TYPE = "forward"
    VERSION = 6
    MAX_SIZE = MAX_FRAME_SIZE  # a long prefill's hidden state
    request_id: str
    plan_version: int
    start_position: int
    tensor: np.ndarray = field(metadata=TENSOR)
    origin: str
    step: int = 0
    sampling: dict[str, Any] | None = None
    logprobs: int | None = None
    score: tuple[int, ...] | None = None
    reuse_from: str | None = None
    reuse_length: int = 0
    tokens: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check_text(self, "request_id", MAX_ID_LENGTH, printable=True)
        check_uint(self, "plan_version")
        check_uint(self, "start_position", U32)
        self._check_tensor()
        check_node_id(self, "origin")
        check_uint(self, "step", U32)
        if self.sampling is not None:
            check_map(self, "sampling", MAX_SAMPLING_FIELDS, MAX_SAMPLING_ITEMS)
        if self.logprobs is not None:
            check_uint(self, "logprobs", MAX_TOP_LOGPROBS)
        if self.score is not None:
            self._check_score()
        self._check_tokens()
        self._check_reuse()

    def _check_reuse(self) -> None:
        check_uint(self, "reuse_length", U32)
        if self.reuse_from is not None:
            check_text(self, "reuse_from", MAX_ID_LENGTH, printable=True)
            if not 0 < self.reuse_length == self.start_position:
                raise _invalid(
                    self, "reuse_length", f"the start position {self.start_position}, > 0",
                    self.reuse_length,
                )  # fmt: skip
        elif self.reuse_length:
            raise _invalid(self, "reuse_length", "0 without reuse_from", self.reuse_length)

    def _check_score(self) -> None:
        score, rows = self.score, self.tensor.shape[0]
        expected = (
            f"at most {min(rows, MAX_SCORED_POSITIONS)} token ids, "
            f"with logprobs 0..{MAX_SCORED_TOP}"
        )
        if (
            not isinstance(score, (list, tuple))
            or len(score) > min(rows, MAX_SCORED_POSITIONS)
            or not all(_is_int(t) and 0 <= t <= U32 for t in score)
            or self.logprobs is None
            or self.logprobs > MAX_SCORED_TOP
        ):
            raise _invalid(self, "score", expected, score)
        object.__setattr__(self, "score", tuple(int(t) for t in score))

    def _check_tokens(self) -> None:
        tokens = self.tokens
        if (
            not isinstance(tokens, list | tuple)
            or len(tokens) > self.tensor.shape[0]
            or not all(_is_int(t) and 0 <= t <= U32 for t in tokens)
        ):
            raise _invalid(self, "tokens", "token ids, at most one per tensor row", tokens)
        object.__setattr__(self, "tokens", tuple(tokens))

    def _check_tensor(self) -> None:
        tensor = self.tensor
        if not isinstance(tensor, np.ndarray):
            raise _invalid(self, "tensor", "a numpy array", tensor)
        tokens = tensor.dtype == np.int32 and tensor.ndim == 1
        hidden = tensor.dtype in (np.float16, np.float32) and tensor.ndim == 2
        if not (tokens or hidden) or tensor.shape[0] == 0:
            raise _invalid(
                self, "tensor", "int32 tokens (T,) or float hidden states (T, hidden), T > 0",
                f"{tensor.dtype} array of shape {tensor.shape}",
            )  # fmt: skip


@register
@dataclass(frozen=True)
class TokenResult(Message):
    """The token the last shard sampled for a request, sent to its origin
    (which alone decides when the request ends).

    When the step's `Forward` asked for `logprobs`, `logprob` is the token's
    log-probability under the model's raw distribution and `top_logprobs` the
    best alternatives as (token id, log-probability) pairs, best first; else
    both are None. `prompt_logprobs`, for a `Forward` with `score`, holds
    one (log-probability, alternatives) pair for each scored prompt token.

    Version 2 dropped version 1's `finish_reason`, which no node ever set;
    version 3 added `logprob`, `top_logprobs` and `prompt_logprobs`."""

    TYPE = "token"
    VERSION = 3
    request_id: str
    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] | None = None
    prompt_logprobs: tuple[tuple[float, tuple[tuple[int, float], ...]], ...] | None = None

    def __post_init__(self) -> None:
        check_text(self, "request_id", MAX_ID_LENGTH, printable=True)
        check_uint(self, "token_id", U32)
        if self.logprob is not None and not _is_logprob(self.logprob):
            raise _invalid(self, "logprob", "a float <= 0 (or -inf)", self.logprob)
        if self.top_logprobs is not None:
            top = self._checked_top(self.top_logprobs, "top_logprobs", MAX_TOP_LOGPROBS)
            object.__setattr__(self, "top_logprobs", top)
        if self.prompt_logprobs is not None:
            object.__setattr__(self, "prompt_logprobs", self._checked_prompt())

    def _checked_prompt(self) -> tuple[tuple[float, tuple[tuple[int, float], ...]], ...]:
        scored = self.prompt_logprobs
        expected = f"at most {MAX_SCORED_POSITIONS} [logprob, alternatives] pairs"
        if not isinstance(scored, (list, tuple)) or len(scored) > MAX_SCORED_POSITIONS:
            raise _invalid(self, "prompt_logprobs", expected, scored)
        checked = []
        for item in scored:
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and _is_logprob(item[0])):
                raise _invalid(self, "prompt_logprobs", expected, scored)
            top = self._checked_top(item[1], "prompt_logprobs", MAX_SCORED_TOP)
            checked.append((float(item[0]), top))
        return tuple(checked)

    def _checked_top(self, pairs: object, name: str, most: int) -> tuple[tuple[int, float], ...]:
        """The pairs as tuples (CBOR gives lists), or LocalProtocolError."""
        expected = f"at most {most} [token id, logprob] pairs"
        if not isinstance(pairs, (list, tuple)) or len(pairs) > most:
            raise _invalid(self, name, expected, pairs)
        checked = []
        for pair in pairs:
            if not (
                isinstance(pair, (list, tuple))
                and len(pair) == 2
                and _is_int(pair[0])
                and 0 <= pair[0] <= U32
                and _is_logprob(pair[1])
            ):
                raise _invalid(self, name, expected, pairs)
            checked.append((int(pair[0]), float(pair[1])))
        return tuple(checked)


@register
@dataclass(frozen=True)
class Release(Message):
    """The request is over: free its KV cache (releasing an unknown id is fine).

    `keep` > 0 asks the node to keep the cache instead, if its prefix cache has
    room, for later requests to start from its first `keep` positions
    (`Forward.reuse_from`); the node may evict it whenever it likes.
    Version 2 added `keep`.
    """

    TYPE = "release"
    VERSION = 2
    request_id: str
    keep: int = 0

    def __post_init__(self) -> None:
        check_text(self, "request_id", MAX_ID_LENGTH, printable=True)
        check_uint(self, "keep", U32)


MAX_PLAN_NODES = 1024
MAX_PLAN_ITEMS = 8 * MAX_PLAN_NODES  # 7 items per node and a few for the plan itself


@register
@dataclass(frozen=True)
class RequestFailed(Message):
    """A node could not run a step of a request; sent to the request's origin.

    `retryable` is true when the request may succeed if replayed under a newer
    plan (the node moved to another plan, or its successor is gone); false
    when replaying cannot help (the engine refused the input). `prefix_miss`:
    the node no longer holds the cached prefix the request's first `Forward`
    asked to start from (`reuse_from`); the origin sends the prompt in full.
    Version 2 added `prefix_miss`.
    """

    TYPE = "request_failed"
    VERSION = 2
    request_id: str
    reason: str
    retryable: bool
    prefix_miss: bool = False

    def __post_init__(self) -> None:
        check_text(self, "request_id", MAX_ID_LENGTH, printable=True)
        check_text(self, "reason", MAX_REASON_LENGTH, min_length=0)
        check_bool(self, "retryable")
        check_bool(self, "prefix_miss")


@register
@dataclass(frozen=True)
class PlanProposal(Message):
    """The coordinator's plan for the ring (see `exoquic.topology.Plan.to_dict`).

    Only the map's shape is checked here; the receiver decodes it with
    `Plan.from_dict` and treats a bad plan as a protocol error. The proposer
    is the authenticated sender, never a field.
    """

    TYPE = "plan_proposal"
    MAX_SIZE = 256 << 10
    plan: dict[str, Any]

    def __post_init__(self) -> None:
        plan = self.plan
        if not isinstance(plan, dict) or not all(isinstance(k, str) for k in plan):
            raise _invalid(self, "plan", "a map with text keys", plan)
        assignments = plan.get("assignments")
        if not isinstance(assignments, list) or len(assignments) > MAX_PLAN_NODES:
            raise _invalid(self, "plan", f"a plan of at most {MAX_PLAN_NODES} nodes", plan)
        check_items(self, "plan", MAX_PLAN_ITEMS)


@register
@dataclass(frozen=True)
class PlanReady(Message):
    """The sender has loaded its shard of plan `version` proposed by `proposer`
    (or holds no shard in it) and will serve it. A plan serves requests once
    every node in it said so."""

    TYPE = "plan_ready"
    version: int
    proposer: str

    def __post_init__(self) -> None:
        check_uint(self, "version")
        check_node_id(self, "proposer")


@register
@dataclass(frozen=True)
class Interest(Message):
    """On a ring of a model loaded on demand: whether the sender still wants the
    model loaded (it has requests for it, or its keep-alive has not run out).

    Sent on each new link and whenever it changes. A node keeps its shard of
    such a model while it wants the model itself or any linked peer of that
    ring does; when nobody does, every node unloads it (docs/ring.md).
    """

    TYPE = "interest"
    wanted: bool

    def __post_init__(self) -> None:
        check_bool(self, "wanted")


PREPARATION_PHASES = frozenset({"downloading", "loading", "ready", "failed"})


@register
@dataclass(frozen=True)
class ModelProgress(Message):
    """How far the sender is in preparing its shard of `model`: fetching its
    files, loading them into the engine, done, or failed with `error`.

    Sent to every linked peer when it changes (at most about twice a second)
    and once on each new link; receivers keep the latest per peer for
    `GET /v1/topology`. The node is the authenticated sender, never a field.
    Byte and file counts cover the files this load fetches (0 when nothing
    is downloaded, as for a bundled model).
    """

    TYPE = "model_progress"
    model: str
    phase: str
    done_bytes: int
    total_bytes: int
    files_done: int
    files_total: int
    bytes_per_second: int
    error: str

    def __post_init__(self) -> None:
        check_text(self, "model", MAX_MODEL_ID_LENGTH, printable=True)
        check_choice(self, "phase", PREPARATION_PHASES)
        check_uint(self, "total_bytes")
        check_uint(self, "done_bytes", self.total_bytes)
        check_uint(self, "files_total", U32)
        check_uint(self, "files_done", self.files_total)
        check_uint(self, "bytes_per_second")
        check_text(self, "error", MAX_REASON_LENGTH, min_length=0)
        if self.error and self.phase != "failed":
            raise _invalid(self, "error", f"empty unless the phase is failed ({self.phase})",
                           self.error)  # fmt: skip


# --- pairing (ALPN exoquic-pair/1), see exoquic.pairing.protocol -------------

PUBLIC_KEY_SIZE = 32
SPAKE2_MESSAGE_SIZE = 33  # a side byte and an ed25519 group element
CONFIRMATION_SIZE = 32  # HMAC-SHA256


@register
@dataclass(frozen=True)
class PairRequest(Message):
    """Initiator (who typed the code) -> responder: my key and name."""

    TYPE = "pair_request"
    public_key: bytes
    name: str

    def __post_init__(self) -> None:
        check_bytes(self, "public_key", PUBLIC_KEY_SIZE)
        check_name(self, "name")


@register
@dataclass(frozen=True)
class PairResponse(Message):
    """Responder (who showed the code) -> initiator: my key, name and SPAKE2 message."""

    TYPE = "pair_response"
    public_key: bytes
    name: str
    spake: bytes

    def __post_init__(self) -> None:
        check_bytes(self, "public_key", PUBLIC_KEY_SIZE)
        check_name(self, "name")
        check_bytes(self, "spake", SPAKE2_MESSAGE_SIZE)


@register
@dataclass(frozen=True)
class PairFinish(Message):
    """Initiator -> responder: my SPAKE2 message and proof that I know the key."""

    TYPE = "pair_finish"
    spake: bytes
    confirm: bytes

    def __post_init__(self) -> None:
        check_bytes(self, "spake", SPAKE2_MESSAGE_SIZE)
        check_bytes(self, "confirm", CONFIRMATION_SIZE)


@register
@dataclass(frozen=True)
class PairConfirm(Message):
    """Responder -> initiator: proof that I derived the same key. Pairing done."""

    TYPE = "pair_confirm"
    confirm: bytes

    def __post_init__(self) -> None:
        check_bytes(self, "confirm", CONFIRMATION_SIZE)
