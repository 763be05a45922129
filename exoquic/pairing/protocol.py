"""Pairing: two devices prove they see the same short code and learn each other's key.

One device shows a `PairingCode` (the responder); the person types it on the
other (the initiator), which connects with the pairing ALPN. Both run SPAKE2
on the code with `idA`/`idB` set to the initiator's and the responder's raw
ed25519 keys, then prove to each other (HMAC key confirmation) that they
derived the same key. Messages, in order (see `exoquic.wire.messages`):

    initiator -> responder  PairRequest(public_key, name)
    responder -> initiator  PairResponse(public_key, name, spake=Y)
    initiator -> responder  PairFinish(spake=X, confirm=HMAC(K, "initiator" | transcript))
    responder -> initiator  PairConfirm(confirm=HMAC(K, "responder" | transcript))

Why a man in the middle fails even when it relays the right code: it must
terminate TLS with its own key, and each side checks that the key in the
pairing messages is the key TLS showed it (`tls_peer_key`). So the initiator
runs SPAKE2 with ids (its key, relay's key) and the responder with (relay's
key, its key): different ids give different keys and the confirmation fails.
Without the code an attacker gets one guess per code: the code is good for
one attempt (it burns on first use, success or failure) and expires.

Sans-IO: the state machines take and return frame payloads, with explicit
`now` (any monotonic clock); the transport moves the bytes.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TypeVar

import spake2
import spake2.ed25519_basic

from exoquic import defaults
from exoquic.identity import crockford
from exoquic.identity.node_id import node_id_from_public_key
from exoquic.wire import cbor
from exoquic.wire.errors import ErrorCode, ProtocolError, RemoteProtocolError
from exoquic.wire.messages import (
    Message,
    PairConfirm,
    PairFinish,
    PairRequest,
    PairResponse,
    decode_message,
    encode_message,
)

CODE_LIFETIME = defaults.PAIRING_CODE_LIFETIME_S
"""Seconds a shown code stays valid (and an initiator waits for a pairing)."""
CODE_SYMBOLS = 7
"""Random base32 symbols in a code (35 bits), followed by one check symbol."""
_PROTOCOL_LABEL = "exoquic-pair/1"
_M = TypeVar("_M", bound=Message)

# What a malformed SPAKE2 message can make python-spake2 raise.
_SPAKE2_ERRORS = (ValueError, TypeError, spake2.spake2.SPAKEError, spake2.ed25519_basic.NotOnCurve)


class PairingError(ProtocolError):
    """Pairing failed: wrong code, expired or used code, or a man in the middle.

    The connection closes with `ErrorCode.PAIRING_FAILED`; nothing is trusted.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, ErrorCode.PAIRING_FAILED)


class PairingCodeError(ValueError):
    """Typed text that is not a pairing code (caught locally, before any network)."""


def parse_pairing_code(text: str) -> str:
    """The canonical form (`XXXX-XXXX`) of a code as typed: any case, hyphens
    optional, O/0 and I/L/1 forgiven. A typo fails the check symbol here, so it
    never reaches (and burns) the other device's code."""
    symbols = crockford.normalize(text)
    if len(symbols) != CODE_SYMBOLS + 1:
        raise PairingCodeError(
            f"a pairing code has {CODE_SYMBOLS + 1} characters, not {len(symbols)}"
        )
    try:
        value = crockford.decode(symbols[:-1])
    except ValueError as exc:
        raise PairingCodeError(f"not a pairing code: {exc}") from None
    if crockford.check_symbol(value) != symbols[-1]:
        raise PairingCodeError("pairing code mistyped (its last character does not match)")
    return _format_code(value)


@dataclass
class PairingCode:
    """A one-time code shown by the responder: valid until `expires_at`, for one attempt."""

    text: str
    expires_at: float
    used: bool = False

    @classmethod
    def generate(cls, now: float, lifetime: float = CODE_LIFETIME) -> PairingCode:
        while True:
            value = secrets.randbits(5 * CODE_SYMBOLS)
            # Keep codes whose check symbol is a letter or digit, not one of `*~$=U`
            # (people should not have to type those); this costs 0.2 bits.
            if value % crockford.CHECK_MODULUS < 32:
                return cls(_format_code(value), now + lifetime)

    def claim(self, now: float) -> None:
        """Start the one attempt this code allows; PairingError if it cannot."""
        if now > self.expires_at:
            raise PairingError("the pairing code expired; show a new one")
        if self.used:
            raise PairingError("the pairing code was already used; show a new one")
        self.used = True


@dataclass(frozen=True)
class PairingResult:
    """The paired peer, to add to the trust store (`TrustStore.add(public_key, name)`)."""

    public_key: bytes
    name: str
    node_id: str


class _State(enum.Enum):
    START = "start"
    WAIT_RESPONSE = "wait-response"
    WAIT_REQUEST = "wait-request"
    WAIT_FINISH = "wait-finish"
    WAIT_CONFIRM = "wait-confirm"
    DONE = "done"
    FAILED = "failed"


class _Pairing:
    """What both sides share: state, failure handling and key confirmation."""

    def __init__(self, public_key: bytes, name: str, tls_peer_key: bytes | None) -> None:
        self.public_key = public_key
        self.name = name
        self.tls_peer_key = tls_peer_key
        self.result: PairingResult | None = None
        self._state = _State.START
        self._error: ProtocolError | None = None
        self._deadline = float("inf")

    @property
    def state(self) -> str:
        return self._state.value

    def receive(self, data: bytes, now: float) -> bytes | None:
        """Handle one frame payload from the peer; return the payload to send
        back, or None when there is nothing more to send.

        Raises PairingError or RemoteProtocolError; after that every call
        raises again and nothing may be trusted.
        """
        if self._error is not None:
            raise PairingError(f"pairing already failed: {self._error}")
        try:
            if now > self._deadline:
                raise PairingError("pairing took too long; start again with a new code")
            return self._handle(decode_message(data), now)
        except ProtocolError as exc:
            self._fail(exc)
            raise

    def _handle(self, message: Message, now: float) -> bytes | None:
        raise NotImplementedError

    def _fail(self, error: ProtocolError) -> None:
        self._error = error
        self._state = _State.FAILED
        self.result = None

    def _expect(self, message: Message, kind: type[_M], state: _State) -> _M:
        if self._state is not state or not isinstance(message, kind):
            raise RemoteProtocolError(
                f"unexpected {message.TYPE} message while in state {self._state.value}",
                ErrorCode.UNEXPECTED_MESSAGE,
            )
        return message

    def _check_peer_key(self, peer_key: bytes) -> None:
        if self.tls_peer_key is not None and peer_key != self.tls_peer_key:
            raise PairingError(
                "the peer's pairing key is not the key it showed in TLS: "
                "someone is relaying this connection"
            )
        if peer_key == self.public_key:
            raise PairingError("the peer claims our own key")


class PairingInitiator(_Pairing):
    """The device where the person typed the code. Call `start`, then `receive`
    each payload from the responder; `result` is set when pairing succeeds.

    `tls_peer_key` is the responder's raw key from the TLS handshake (None only
    in tests that deliberately run without TLS binding).
    """

    def __init__(
        self,
        code: str,
        public_key: bytes,
        name: str,
        *,
        tls_peer_key: bytes | None,
        timeout: float = CODE_LIFETIME,
    ) -> None:
        super().__init__(public_key, name, tls_peer_key)
        self._password = parse_pairing_code(code).encode()
        self._timeout = timeout
        self._expected_confirm = b""
        self._peer: PairingResult | None = None

    def start(self, now: float) -> bytes:
        """The first payload to send (a PairRequest)."""
        if self._state is not _State.START:
            raise RuntimeError("start() is called once, first")
        self._deadline = now + self._timeout
        self._state = _State.WAIT_RESPONSE
        return encode_message(PairRequest(self.public_key, self.name))

    def _handle(self, message: Message, now: float) -> bytes | None:
        if isinstance(message, PairResponse):
            return self._on_response(self._expect(message, PairResponse, _State.WAIT_RESPONSE))
        confirm = self._expect(message, PairConfirm, _State.WAIT_CONFIRM)
        if not hmac.compare_digest(confirm.confirm, self._expected_confirm):
            raise PairingError(
                "the other device could not prove it knows the code: "
                "wrong code, or a man in the middle"
            )
        self.result = self._peer
        self._state = _State.DONE
        return None

    def _on_response(self, response: PairResponse) -> bytes:
        self._check_peer_key(response.public_key)
        side_a = spake2.SPAKE2_A(self._password, idA=self.public_key, idB=response.public_key)
        spake_x = side_a.start()
        key = _finish(side_a, response.spake)
        transcript = _transcript(
            self.public_key, self.name, response.public_key, response.name, spake_x, response.spake
        )
        self._expected_confirm = _confirmation(key, "responder", transcript)
        self._peer = _result(response.public_key, response.name)
        self._state = _State.WAIT_CONFIRM
        return encode_message(PairFinish(spake_x, _confirmation(key, "initiator", transcript)))


class PairingResponder(_Pairing):
    """The device that shows the code. Feed it each payload from the initiator
    with `receive` and send back what it returns; `result` is set on success.

    `tls_peer_key` is the initiator's raw key from the TLS handshake.
    """

    def __init__(
        self, code: PairingCode, public_key: bytes, name: str, *, tls_peer_key: bytes | None
    ) -> None:
        super().__init__(public_key, name, tls_peer_key)
        self.code = code
        self._state = _State.WAIT_REQUEST
        self._request: PairRequest | None = None
        self._side_b: spake2.SPAKE2_B | None = None
        self._spake_y = b""

    def receive(self, data: bytes, now: float) -> bytes | None:
        if self._state is _State.WAIT_REQUEST and self._error is None:
            try:
                self.code.claim(now)  # whatever happens next, this was the attempt
            except PairingError as exc:
                self._fail(exc)
                raise
            self._deadline = self.code.expires_at
        return super().receive(data, now)

    def _handle(self, message: Message, now: float) -> bytes | None:
        if isinstance(message, PairRequest):
            return self._on_request(self._expect(message, PairRequest, _State.WAIT_REQUEST))
        finish = self._expect(message, PairFinish, _State.WAIT_FINISH)
        request, side_b = self._request, self._side_b
        assert request is not None and side_b is not None  # set on entering WAIT_FINISH
        key = _finish(side_b, finish.spake)
        transcript = _transcript(
            request.public_key, request.name, self.public_key, self.name, finish.spake,
            self._spake_y,
        )  # fmt: skip
        if not hmac.compare_digest(finish.confirm, _confirmation(key, "initiator", transcript)):
            raise PairingError(
                "the other device could not prove it knows the code: "
                "wrong code, or a man in the middle"
            )
        self.result = _result(request.public_key, request.name)
        self._state = _State.DONE
        return encode_message(PairConfirm(_confirmation(key, "responder", transcript)))

    def _on_request(self, request: PairRequest) -> bytes:
        self._check_peer_key(request.public_key)
        self._request = request
        password = self.code.text.encode()
        self._side_b = spake2.SPAKE2_B(password, idA=request.public_key, idB=self.public_key)
        self._spake_y = self._side_b.start()
        self._state = _State.WAIT_FINISH
        return encode_message(PairResponse(self.public_key, self.name, self._spake_y))


def _finish(side: spake2.SPAKE2_A | spake2.SPAKE2_B, peer_message: bytes) -> bytes:
    try:
        return bytes(side.finish(peer_message))
    except _SPAKE2_ERRORS as exc:
        raise RemoteProtocolError(
            f"invalid SPAKE2 message: {exc}", ErrorCode.INVALID_FIELD
        ) from None


def _transcript(
    initiator_key: bytes,
    initiator_name: str,
    responder_key: bytes,
    responder_name: str,
    spake_x: bytes,
    spake_y: bytes,
) -> bytes:
    # Both keys are also SPAKE2's ids; the names are covered so that nobody
    # can rename a device on its way into the trust store.
    return cbor.dumps(
        [_PROTOCOL_LABEL, initiator_key, initiator_name, responder_key, responder_name,
         spake_x, spake_y]
    )  # fmt: skip


def _confirmation(key: bytes, role: str, transcript: bytes) -> bytes:
    return hmac.new(key, f"{_PROTOCOL_LABEL} {role}".encode() + transcript, hashlib.sha256).digest()


def _result(public_key: bytes, name: str) -> PairingResult:
    return PairingResult(public_key, name, node_id_from_public_key(public_key))


def _format_code(value: int) -> str:
    symbols = crockford.encode(value, CODE_SYMBOLS) + crockford.check_symbol(value)
    return f"{symbols[:4]}-{symbols[4:]}"
