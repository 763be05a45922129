"""Pairing over QUIC: one device offers a code, the other connects and proves it knows it.

The device showing the code (the responder) opens its own endpoint that
serves only the pairing ALPN (node connections are refused):

    async with open_pairing_offer(identity, trust, name="desk") as offer:
        print(offer.code.text, offer.port)
        peer = await offer.wait_result()          # PairingFailed when it does not work out

The device where the code is typed (the initiator):

    peer = await pair_with(identity, trust, "ABCD-EFGH", [("192.0.2.5", 41234)], name="laptop")

Each side binds the protocol to the key the peer showed in TLS
(`connection.peer_public_key`), so a relay that re-terminates QUIC with its
own key makes the key confirmation fail (see `exoquic.pairing.protocol`).
Both sides add the peer to their trust store before reporting success; the
responder only sends its last message once that worked, so a refused name
(a known name with another key) leaves neither side trusting the other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from exoquic.identity.keys import Identity
from exoquic.identity.node_id import node_id_from_public_key
from exoquic.identity.trust import TrustedPeer, TrustStore, TrustStoreError
from exoquic.pairing.protocol import (
    CODE_LIFETIME,
    PairingCode,
    PairingInitiator,
    PairingResponder,
    PairingResult,
    parse_pairing_code,
)
from exoquic.transport import (
    Connection,
    ConnectionClosed,
    Endpoint,
    MessageStream,
    QuicStream,
    TransportConfig,
    TransportError,
    open_endpoint,
)
from exoquic.wire.errors import ErrorCode, ProtocolError
from exoquic.wire.messages import PairResponse, decode_message

CONNECT_TIMEOUT = 5.0
"""Seconds to wait for the QUIC handshake with one address of the other device."""
EXCHANGE_TIMEOUT = 30.0
"""Seconds the four pairing messages may take once connected (a LAN needs milliseconds)."""
MAX_PAIRING_FRAME = 4096
"""Pairing messages are under 200 bytes; nobody unauthenticated gets to make us buffer more."""
_GOODBYE_GRACE = 2.0  # the responder waits this long for the initiator to take its last message
_FINISH_GRACE = 3.0  # an attempt under way when the code expires ends within this

SHOW_NEW_CODE = "Run `exoquic pair` again for a new code."
ASK_NEW_CODE = (
    "The code is used up: run `exoquic pair` on the other device for a new one and try again."
)


class PairingFailed(Exception):
    """Pairing did not happen; the message says why and what to do next.

    Nothing was trusted on this side (on the initiator, a failure after the
    responder's confirmation arrived says so: that is a half pairing).
    """


def _nobody(public_key: bytes) -> bool:
    return False  # pairing endpoints serve no node connections


# --- the responder: shows the code ------------------------------------------


class PairingOffer:
    """A pairing code offered on a QUIC endpoint; create it with `open_pairing_offer`.

    The first connection that sends a pairing message uses the code, whatever
    the outcome; later ones are refused. `wait_result` reports that attempt.
    To offer it on an endpoint that already runs (a node's), set `endpoint`
    and `endpoint.set_pairing_handler(offer.serve_stream)`.
    """

    def __init__(self, identity: Identity, trust: TrustStore, name: str, code: PairingCode) -> None:
        self.identity = identity
        self.trust = trust
        self.name = name
        self.code = code
        self.endpoint: Endpoint | None = None
        self._result: PairingResult | None = None
        self._error: PairingFailed | None = None
        self._done = trio.Event()

    @property
    def port(self) -> int:
        """The UDP port the pairing endpoint listens on."""
        assert self.endpoint is not None
        return int(self.endpoint.local_address[1])

    async def wait_result(self) -> PairingResult:
        """The paired device, once it is in our trust store and has our confirmation.

        Raises PairingFailed when the one attempt fails or the code expires
        before anyone used it.
        """
        with trio.move_on_at(self.code.expires_at):
            await self._done.wait()
        if not self._done.is_set() and self.code.used:
            # An attempt is under way; the state machine refuses it past expiry.
            with trio.move_on_after(_FINISH_GRACE):
                await self._done.wait()
        if self._result is not None:
            return self._result
        if self._error is not None:
            raise self._error
        if self.code.used:
            raise PairingFailed(
                f"the other device did not finish pairing before the code expired. {SHOW_NEW_CODE}"
            )
        raise PairingFailed(f"the code expired before any device used it. {SHOW_NEW_CODE}")

    async def serve_stream(self, stream: QuicStream) -> None:
        """The endpoint's pairing handler: one pairing conversation per stream."""
        connection = stream.connection
        messages = MessageStream(stream, max_frame_size=MAX_PAIRING_FRAME)
        responder = PairingResponder(
            self.code, self.identity.public_key, self.name, tls_peer_key=connection.peer_public_key
        )
        owner = False  # whether this stream made the one attempt the code allows
        try:
            while responder.result is None:
                payload = await _receive(messages)
                owner = owner or not self.code.used
                reply = responder.receive(payload, trio.current_time())
                if responder.result is not None:
                    self._trust(responder.result, connection)
                if reply is not None:
                    await messages.send_frame(reply)
            await _wait_for_goodbye(messages)
        except ProtocolError as exc:
            connection.close(exc.error_code, str(exc)[:200])
            failure = PairingFailed(f"pairing failed: {exc}. {SHOW_NEW_CODE}")
        except PairingFailed as exc:
            failure = exc
        except TransportError as exc:
            failure = PairingFailed(
                f"the other device went away during pairing ({_describe_close(exc)}). "
                f"{SHOW_NEW_CODE}"
            )
        else:
            self._done.set()
            return
        if owner:
            if self._result is None:
                self._error = self._error or failure
            # else: we trust the peer but it may lack our confirmation (a half
            # pairing, see docs/security.md); our side of it did succeed.
            self._done.set()

    def _trust(self, peer: PairingResult, connection: Connection) -> None:
        try:
            self.trust.add(peer.public_key, peer.name)
        except TrustStoreError as exc:
            connection.close(
                ErrorCode.PAIRING_FAILED,
                f"the other device cannot trust this one as {peer.name!r} (that name is "
                "taken there, or its trust store is broken); pick another --name",
            )
            raise PairingFailed(f"not trusting {peer.node_id}: {exc}") from None
        except (OSError, ValueError) as exc:
            connection.close(ErrorCode.PAIRING_FAILED, "the other device cannot save its trust")
            raise PairingFailed(f"cannot save the trust store: {exc}") from None
        self._result = peer


@asynccontextmanager
async def open_pairing_offer(
    identity: Identity,
    trust: TrustStore,
    *,
    name: str,
    host: str = "0.0.0.0",
    port: int = 0,
    lifetime: float = CODE_LIFETIME,
    config: TransportConfig | None = None,
) -> AsyncIterator[PairingOffer]:
    """Show a new code (`offer.code`) and serve the pairing ALPN on a new endpoint
    bound to `host`:`port` (0: any free port, see `offer.port`) until the block exits.

    The code is good for `lifetime` seconds and one attempt. Raises OSError
    when the port cannot be bound.
    """
    offer = PairingOffer(identity, trust, name, PairingCode.generate(trio.current_time(), lifetime))
    async with open_endpoint(
        identity,
        verify_peer=_nobody,
        pairing_handler=offer.serve_stream,
        host=host,
        port=port,
        config=config,
    ) as endpoint:
        offer.endpoint = endpoint
        yield offer


# --- the initiator: types the code ------------------------------------------


async def pair_with(
    identity: Identity,
    trust: TrustStore,
    code: str,
    addresses: Sequence[tuple[str, int]],
    *,
    name: str,
    config: TransportConfig | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    exchange_timeout: float = EXCHANGE_TIMEOUT,
) -> PairingResult:
    """Pair with the device showing `code`, reachable at one of `addresses`
    (tried in order), from a fresh endpoint; add it to `trust` and return it.

    Raises PairingCodeError for text that is not a code (before any network:
    a typo does not burn the other device's code) and PairingFailed otherwise.
    """
    parse_pairing_code(code)
    if not addresses:
        raise ValueError("no address to pair with")
    host = "::" if any(":" in address[0] for address in addresses) else "0.0.0.0"
    async with open_endpoint(identity, verify_peer=_nobody, host=host, config=config) as endpoint:
        connection = await _connect(endpoint, addresses, connect_timeout)
        with trio.move_on_after(exchange_timeout):
            return await _initiate(connection, identity, trust, code, name)
        connection.close(ErrorCode.PAIRING_FAILED, "pairing took too long")
        raise PairingFailed(
            f"the other device did not answer within {exchange_timeout:g} s. {ASK_NEW_CODE}"
        )


async def _connect(
    endpoint: Endpoint, addresses: Sequence[tuple[str, int]], timeout: float
) -> Connection:
    problems = []
    for host, port in addresses:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            with trio.move_on_after(timeout):
                return await endpoint.connect_pairing((host, port))
            problems.append(f"{where} did not answer within {timeout:g} s")
        except ConnectionClosed:
            problems.append(f"{where} refused a pairing connection")
        except OSError as exc:
            problems.append(f"{where}: {exc.strerror or exc}")
    raise PairingFailed(
        f"could not reach the other device ({'; '.join(problems)}). "
        "Is `exoquic pair` still showing its code there?"
    )


async def _initiate(
    connection: Connection, identity: Identity, trust: TrustStore, code: str, name: str
) -> PairingResult:
    initiator = PairingInitiator(
        code, identity.public_key, name, tls_peer_key=connection.peer_public_key
    )
    messages = MessageStream(await connection.open_stream(), max_frame_size=MAX_PAIRING_FRAME)
    try:
        await messages.send_frame(initiator.start(trio.current_time()))
        while initiator.result is None:
            payload = await _receive(messages)
            _refuse_taken_name(trust, payload, connection)
            reply = initiator.receive(payload, trio.current_time())
            if reply is not None:
                await messages.send_frame(reply)
    except ProtocolError as exc:
        connection.close(exc.error_code, str(exc)[:200])
        raise PairingFailed(f"pairing failed: {exc}. {ASK_NEW_CODE}") from None
    except TransportError as exc:
        raise PairingFailed(f"{_describe_close(exc)}. {ASK_NEW_CODE}") from None
    peer = initiator.result
    assert peer is not None  # the loop ends only with a result
    try:
        trust.add(peer.public_key, peer.name)
    except (TrustStoreError, OSError, ValueError) as exc:
        connection.close(ErrorCode.PAIRING_FAILED, "the other device cannot save its trust")
        raise PairingFailed(
            f"the other device trusts this one now, but this one cannot trust it: {exc}. "
            f"Remove the half pairing there with `exoquic trust remove {identity.node_id}`."
        ) from None
    connection.close()  # tells the responder its confirmation arrived
    return peer


def _refuse_taken_name(trust: TrustStore, payload: bytes, connection: Connection) -> None:
    """Stop before proving anything when the responder's name is already trusted
    with another key: the responder then trusts nothing either."""
    try:
        message = decode_message(payload)
    except ProtocolError:
        return  # the state machine reports it
    if not isinstance(message, PairResponse):
        return
    holder = _holder_of(trust, message.name)
    if holder is None or holder.node_id == node_id_from_public_key(message.public_key):
        return
    connection.close(
        ErrorCode.PAIRING_FAILED,
        "the other device already trusts another key under this device's name",
    )
    raise PairingFailed(
        f"refusing to pair: this device already trusts {holder.node_id} as {holder.name!r}, "
        f"a different key. If that device really changed its key, run "
        f"`exoquic trust remove {holder.node_id}` and pair again; otherwise give the other "
        "device another name (`exoquic pair --name ...` there)."
    )


def _holder_of(trust: TrustStore, name: str) -> TrustedPeer | None:
    trust.reload()
    wanted = name.casefold()
    return next((peer for peer in trust.list() if peer.name.casefold() == wanted), None)


# --- shared -----------------------------------------------------------------


async def _receive(messages: MessageStream) -> bytes:
    payload = await messages.receive_frame()
    if payload is None:
        raise TransportError("the other device ended the pairing early")
    return payload


async def _wait_for_goodbye(messages: MessageStream) -> None:
    """Keep the connection up until the initiator has our last message: it
    closes the connection (or ends the stream) once it has."""
    with trio.move_on_after(_GOODBYE_GRACE):
        try:
            while await messages.receive_frame() is not None:
                pass
        except (TransportError, ProtocolError):
            pass


def _describe_close(error: TransportError) -> str:
    if not isinstance(error, ConnectionClosed):
        return str(error)
    reason = _printable(error.reason)
    if error.by_peer and error.error_code == ErrorCode.PAIRING_FAILED:
        return f"the other device refused the pairing: {reason or 'no reason given'}"
    if error.idle_timeout:
        return "the other device stopped answering"
    if error.by_peer:
        return f"the other device closed the connection (code 0x{error.error_code:x} {reason})"
    return f"the connection closed (code 0x{error.error_code:x} {reason})"


def _printable(text: str) -> str:
    """The peer chose this text: keep terminal escapes out of our output."""
    return "".join(c if c.isprintable() else "?" for c in text[:200]).strip()


__all__ = [
    "CONNECT_TIMEOUT",
    "EXCHANGE_TIMEOUT",
    "PairingFailed",
    "PairingOffer",
    "open_pairing_offer",
    "pair_with",
]
