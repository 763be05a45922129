"""Pairing state machines, paired by hand over explicit bytes and time (no sockets)."""

from collections.abc import Callable
from dataclasses import replace

import pytest

from exoquic.identity import crockford
from exoquic.identity.keys import Identity
from exoquic.pairing.protocol import (
    CODE_LIFETIME,
    PairingCode,
    PairingCodeError,
    PairingError,
    PairingInitiator,
    PairingResponder,
    PairingResult,
    parse_pairing_code,
)
from exoquic.wire.errors import ErrorCode, RemoteProtocolError
from exoquic.wire.messages import (
    Message,
    PairConfirm,
    PairFinish,
    PairRequest,
    PairResponse,
    Ping,
    decode_message,
    encode_message,
)

NOW = 1000.0
PHONE, DESK, RELAY = Identity.generate(), Identity.generate(), Identity.generate()

Relay = Callable[[bytes], bytes]


def make_pair(
    typed: str | None = None,
    *,
    code: PairingCode | None = None,
    initiator_sees: bytes | None = DESK.public_key,
    responder_sees: bytes | None = PHONE.public_key,
) -> tuple[PairingInitiator, PairingResponder]:
    code = code or PairingCode.generate(NOW)
    initiator = PairingInitiator(
        typed or code.text, PHONE.public_key, "phone", tls_peer_key=initiator_sees
    )
    responder = PairingResponder(code, DESK.public_key, "desk", tls_peer_key=responder_sees)
    return initiator, responder


def run(
    initiator: PairingInitiator,
    responder: PairingResponder,
    *,
    now: float = NOW,
    to_responder: Relay = lambda data: data,
    to_initiator: Relay = lambda data: data,
) -> None:
    """Carry payloads between the two sides until one has nothing more to say."""
    data: bytes | None = initiator.start(now)
    while data is not None:
        reply = responder.receive(to_responder(data), now)
        if reply is None:
            return
        data = initiator.receive(to_initiator(reply), now)


def rewrite(change: Callable[[Message], Message]) -> Relay:
    return lambda data: encode_message(change(decode_message(data)))


def test_right_code_pairs_both_sides() -> None:
    initiator, responder = make_pair()
    run(initiator, responder)
    assert initiator.result == PairingResult(DESK.public_key, "desk", DESK.node_id)
    assert responder.result == PairingResult(PHONE.public_key, "phone", PHONE.node_id)
    assert initiator.state == responder.state == "done"
    assert responder.code.used


def test_code_as_typed_with_sloppy_case_and_confusions_pairs() -> None:
    code = PairingCode.generate(NOW)
    sloppy = code.text.lower().replace("-", "").replace("0", "o").replace("1", "l")
    initiator, responder = make_pair(sloppy, code=code)
    run(initiator, responder)
    assert initiator.result is not None and responder.result is not None


def other_valid_code(code: PairingCode) -> str:
    other = PairingCode.generate(NOW).text
    return other if other != code.text else other_valid_code(code)


def test_wrong_code_fails_and_burns_the_code() -> None:
    code = PairingCode.generate(NOW)
    initiator, responder = make_pair(other_valid_code(code), code=code)
    with pytest.raises(PairingError, match="could not prove it knows the code") as info:
        run(initiator, responder)
    assert info.value.error_code == ErrorCode.PAIRING_FAILED
    assert initiator.result is None and responder.result is None
    assert responder.state == "failed"
    # The right code on a second try is refused: one attempt per code.
    initiator, responder = make_pair(code=code)
    with pytest.raises(PairingError, match="already used"):
        run(initiator, responder)


def test_expired_code_fails() -> None:
    initiator, responder = make_pair()
    with pytest.raises(PairingError, match="expired"):
        run(initiator, responder, now=NOW + CODE_LIFETIME + 0.001)
    assert responder.result is None


def test_code_valid_until_its_last_moment() -> None:
    initiator, responder = make_pair()
    run(initiator, responder, now=NOW + CODE_LIFETIME)
    assert responder.result is not None


def test_responder_refuses_to_finish_after_the_code_expired() -> None:
    initiator, responder = make_pair()
    finish = initiator.receive(responder.receive(initiator.start(NOW), NOW) or b"", NOW)
    with pytest.raises(PairingError, match="too long"):
        responder.receive(finish or b"", NOW + CODE_LIFETIME + 1)


def test_initiator_gives_up_after_its_timeout() -> None:
    initiator, responder = make_pair()
    response = responder.receive(initiator.start(NOW), NOW)
    with pytest.raises(PairingError, match="too long"):
        initiator.receive(response or b"", NOW + CODE_LIFETIME + 1)


def test_relay_with_its_own_key_fails_even_with_the_right_code() -> None:
    # The relay terminates TLS on both sides, so each side sees the relay's key
    # in TLS and the relay must put that key into the pairing messages too.
    def as_relay(message: Message) -> Message:
        if isinstance(message, PairRequest | PairResponse):
            return replace(message, public_key=RELAY.public_key)
        return message

    initiator, responder = make_pair(
        initiator_sees=RELAY.public_key, responder_sees=RELAY.public_key
    )
    with pytest.raises(PairingError, match="wrong code, or a man in the middle"):
        run(initiator, responder, to_responder=rewrite(as_relay), to_initiator=rewrite(as_relay))
    assert initiator.result is None and responder.result is None


def test_relay_that_passes_keys_through_is_caught_by_the_tls_key_check() -> None:
    initiator, responder = make_pair(responder_sees=RELAY.public_key)
    with pytest.raises(PairingError, match="not the key it showed in TLS"):
        run(initiator, responder)
    initiator, responder = make_pair(initiator_sees=RELAY.public_key)
    with pytest.raises(PairingError, match="not the key it showed in TLS"):
        run(initiator, responder)


def test_renaming_a_device_in_flight_is_caught() -> None:
    # Even without TLS binding, the names are covered by the confirmation.
    initiator, responder = make_pair(initiator_sees=None, responder_sees=None)

    def rename(message: Message) -> Message:
        return replace(message, name="evil") if isinstance(message, PairRequest) else message

    with pytest.raises(PairingError, match="could not prove"):
        run(initiator, responder, to_responder=rewrite(rename))


def test_initiator_checks_the_responders_proof() -> None:
    initiator, responder = make_pair()

    def forge(message: Message) -> Message:
        return PairConfirm(bytes(32)) if isinstance(message, PairConfirm) else message

    with pytest.raises(PairingError, match="could not prove"):
        run(initiator, responder, to_initiator=rewrite(forge))
    assert responder.result is not None  # the responder finished; the initiator refused
    assert initiator.result is None


def test_peer_claiming_our_own_key_is_refused() -> None:
    initiator, responder = make_pair(responder_sees=DESK.public_key)
    as_desk = rewrite(
        lambda m: replace(m, public_key=DESK.public_key) if isinstance(m, PairRequest) else m
    )
    with pytest.raises(PairingError, match="our own key"):
        run(initiator, responder, to_responder=as_desk)


def test_invalid_spake2_message_is_the_peers_fault() -> None:
    initiator, responder = make_pair()
    responder.receive(initiator.start(NOW), NOW)
    not_on_curve = encode_message(PairFinish(b"A" + b"\xff" * 32, bytes(32)))
    with pytest.raises(RemoteProtocolError, match="SPAKE2") as info:
        responder.receive(not_on_curve, NOW)
    assert info.value.error_code == ErrorCode.INVALID_FIELD


def test_reflected_spake2_message_is_refused() -> None:
    initiator, responder = make_pair()
    response = decode_message(responder.receive(initiator.start(NOW), NOW) or b"")
    assert isinstance(response, PairResponse)
    with pytest.raises(RemoteProtocolError, match="SPAKE2"):
        responder.receive(encode_message(PairFinish(response.spake, bytes(32))), NOW)


@pytest.mark.parametrize("first", [Ping(1), PairFinish(b"A" + bytes(32), bytes(32))])
def test_unexpected_first_message(first: Message) -> None:
    _, responder = make_pair()
    with pytest.raises(RemoteProtocolError) as info:
        responder.receive(encode_message(first), NOW)
    assert info.value.error_code == ErrorCode.UNEXPECTED_MESSAGE
    assert responder.code.used  # even a garbage attempt is the one attempt


def test_repeated_request_is_unexpected_and_later_calls_keep_failing() -> None:
    initiator, responder = make_pair()
    request = initiator.start(NOW)
    responder.receive(request, NOW)
    with pytest.raises(RemoteProtocolError, match="unexpected pair_request"):
        responder.receive(request, NOW)
    with pytest.raises(PairingError, match="already failed"):
        responder.receive(request, NOW)


def test_initiator_refuses_messages_before_start_and_after_done() -> None:
    initiator, responder = make_pair()
    with pytest.raises(RemoteProtocolError, match="unexpected"):
        initiator.receive(encode_message(PairConfirm(bytes(32))), NOW)
    initiator, responder = make_pair()
    run(initiator, responder)
    with pytest.raises(RemoteProtocolError, match="unexpected"):
        initiator.receive(encode_message(PairConfirm(bytes(32))), NOW)
    assert initiator.result is None  # nothing may be trusted after a failure


def test_garbage_bytes_fail_cleanly() -> None:
    _, responder = make_pair()
    with pytest.raises(RemoteProtocolError) as info:
        responder.receive(b"\xff\x00garbage", NOW)
    assert info.value.error_code == ErrorCode.MALFORMED_MESSAGE


# --- codes ----------------------------------------------------------------------


def test_generated_codes_are_short_typable_and_checked() -> None:
    for _ in range(200):
        code = PairingCode.generate(NOW)
        assert len(code.text) == 9 and code.text[4] == "-"
        assert set(code.text.replace("-", "")) <= set(crockford.ALPHABET)
        assert parse_pairing_code(code.text) == code.text
        assert code.expires_at == NOW + CODE_LIFETIME and not code.used


def test_typos_are_caught_before_any_network() -> None:
    code = PairingCode.generate(NOW).text
    symbols = code.replace("-", "")
    for i in range(len(symbols)):
        for replacement in crockford.ALPHABET:
            if replacement != symbols[i]:
                typo = symbols[:i] + replacement + symbols[i + 1 :]
                with pytest.raises(PairingCodeError, match="mistyped"):
                    parse_pairing_code(typo)


@pytest.mark.parametrize(("text", "match"), [("ABC", "8 characters"), ("ABC!-EFGH", "'!'")])
def test_malformed_codes(text: str, match: str) -> None:
    with pytest.raises(PairingCodeError, match=match):
        parse_pairing_code(text)
    with pytest.raises(PairingCodeError):
        PairingInitiator(text, PHONE.public_key, "phone", tls_peer_key=None)
