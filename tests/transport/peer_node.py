"""A minimal exoquic node in its own process, for the transport's multi-process tests.

    python peer_node.py serve   --key HEX --trust HEX,HEX [--idle S]
    python peer_node.py connect --key HEX --trust HEX --to PORT --peer HEX [--idle S]

`serve` prints {"port", "key"} as one JSON line, then answers every Ping
with a Pong until killed. `connect` dials 127.0.0.1:PORT expecting key PEER,
sends one Ping and prints {"ok", "error_code", "by_peer"} as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exoquic.identity.keys import Identity
from exoquic.transport import (
    ConnectionClosed,
    MessageStream,
    QuicStream,
    TransportConfig,
    open_endpoint,
)
from exoquic.wire.messages import Ping, Pong


async def pong(stream: QuicStream) -> None:
    messages = MessageStream(stream)
    while (message := await messages.receive_message()) is not None:
        if isinstance(message, Ping):
            await messages.send_message(Pong(nonce=message.nonce))


def emit(value: dict[str, object]) -> None:
    print(json.dumps(value), flush=True)


async def main(args: argparse.Namespace) -> None:
    private_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(args.key))
    identity = Identity.from_private_key(private_key)
    trusted = {bytes.fromhex(key) for key in args.trust.split(",") if key}
    config = TransportConfig(idle_timeout=args.idle, keepalive_interval=args.idle / 4)
    async with open_endpoint(
        identity,
        verify_peer=trusted.__contains__,
        stream_handler=pong,
        host="127.0.0.1",
        config=config,
    ) as endpoint:
        if args.mode == "serve":
            emit({"port": endpoint.local_address[1], "key": identity.public_key.hex()})
            await trio.sleep_forever()
        try:
            connection = await endpoint.connect(("127.0.0.1", args.to), bytes.fromhex(args.peer))
            async with await MessageStream.open(connection) as messages:
                await messages.send_message(Ping(nonce=7))
                reply = await messages.receive_message()
            emit({"ok": reply == Pong(nonce=7), "error_code": None, "by_peer": None})
        except ConnectionClosed as exc:
            emit({"ok": False, "error_code": exc.error_code, "by_peer": exc.by_peer})


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["serve", "connect"])
    parser.add_argument("--key", required=True)
    parser.add_argument("--trust", default="")
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--to", type=int)
    parser.add_argument("--peer")
    trio.run(main, parser.parse_args(sys.argv[1:]))
