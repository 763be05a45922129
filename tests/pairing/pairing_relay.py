"""A man in the middle for pairing tests: it terminates the initiator's QUIC
connection with its own key, opens its own to the responder, and forwards the
pairing frames both ways (optionally putting its own key into them)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace

import trio

from exoquic.identity.keys import Identity
from exoquic.transport import (
    ConnectionClosed,
    Endpoint,
    MessageStream,
    QuicStream,
    TransportError,
    open_endpoint,
)
from exoquic.wire.messages import PairRequest, PairResponse, decode_message, encode_message

Rewrite = Callable[[bytes], bytes]


def keep(frame: bytes) -> bytes:
    return frame


def own_key(identity: Identity) -> Rewrite:
    """Put `identity`'s key where a pairing message carries a public key."""

    def rewrite(frame: bytes) -> bytes:
        message = decode_message(frame)
        if isinstance(message, (PairRequest, PairResponse)):
            return encode_message(replace(message, public_key=identity.public_key))
        return frame

    return rewrite


@asynccontextmanager
async def open_relay(
    identity: Identity,
    target: tuple[str, int],
    *,
    to_responder: Rewrite = keep,
    to_initiator: Rewrite = keep,
) -> AsyncIterator[Endpoint]:
    """An endpoint accepting pairing connections and relaying each to `target`."""

    async def relay(stream: QuicStream) -> None:
        upstream = await endpoint.connect_pairing(target)
        down, up = MessageStream(stream), await MessageStream.open(upstream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, down, up, to_responder, nursery.cancel_scope)
            nursery.start_soon(_pump, up, down, to_initiator, nursery.cancel_scope)

    async with open_endpoint(
        identity, verify_peer=lambda key: False, pairing_handler=relay, host="127.0.0.1"
    ) as endpoint:
        yield endpoint


async def _pump(
    source: MessageStream, sink: MessageStream, rewrite: Rewrite, done: trio.CancelScope
) -> None:
    try:
        while (frame := await source.receive_frame()) is not None:
            await sink.send_frame(rewrite(frame))
        await sink.send_eof()
    except ConnectionClosed as exc:
        # Pass the close on, reason and all, as a transparent relay would.
        sink.connection.close(exc.error_code, exc.reason)
        done.cancel()
    except TransportError:
        done.cancel()
