"""Nodes in separate processes over loopback: trust, refusal, bad frames, dead peers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from exoquic.identity.keys import Identity
from exoquic.transport import (
    ConnectionClosed,
    Endpoint,
    ErrorCode,
    MessageStream,
    TransportConfig,
    open_endpoint,
)
from exoquic.wire.errors import ErrorCode as WireErrorCode
from exoquic.wire.messages import Ping, Pong

pytestmark = pytest.mark.timeout(120)

PEER_NODE = Path(__file__).with_name("peer_node.py")
IDLE = 2.0
CONFIG = TransportConfig(idle_timeout=IDLE, keepalive_interval=IDLE / 4)


def private_hex(identity: Identity) -> str:
    raw = identity.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return raw.hex()


def node_args(mode: str, identity: Identity, trusted: list[Identity]) -> list[str]:
    trust = ",".join(peer.public_key.hex() for peer in trusted)
    options = ["--key", private_hex(identity), "--trust", trust, "--idle", str(IDLE)]
    return [sys.executable, str(PEER_NODE), mode, *options]


async def read_json_line(process: trio.Process) -> dict[str, object]:
    assert process.stdout is not None
    data = b""
    with trio.fail_after(60):  # a cold interpreter start on a loaded machine
        while not data.endswith(b"\n"):
            chunk = await process.stdout.receive_some()
            assert chunk, f"node exited early (code {process.poll()})"
            data += chunk
    parsed: dict[str, object] = json.loads(data)
    return parsed


@asynccontextmanager
async def serving_node(identity: Identity, trusted: list[Identity]) -> AsyncIterator[trio.Process]:
    process = await trio.lowlevel.open_process(
        node_args("serve", identity, trusted), stdout=subprocess.PIPE
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        await process.wait()


@asynccontextmanager
async def local_node(identity: Identity, trusted: list[Identity]) -> AsyncIterator[Endpoint]:
    keys = {peer.public_key for peer in trusted}
    async with open_endpoint(
        identity, verify_peer=keys.__contains__, host="127.0.0.1", config=CONFIG
    ) as endpoint:
        yield endpoint


async def ping(endpoint: Endpoint, port: int, peer: Identity, nonce: int) -> None:
    connection = await endpoint.connect(("127.0.0.1", port), peer.public_key)
    async with await MessageStream.open(connection) as messages:
        await messages.send_message(Ping(nonce=nonce))
        assert await messages.receive_message() == Pong(nonce=nonce)


async def test_trusted_peers_exchange_messages() -> None:
    here, there = Identity.generate(), Identity.generate()
    async with serving_node(there, [here]) as process, local_node(here, [there]) as endpoint:
        info = await read_json_line(process)
        assert info["key"] == there.public_key.hex()
        port = int(str(info["port"]))
        connection = await endpoint.connect(("127.0.0.1", port), there.public_key)
        async with await MessageStream.open(connection) as messages:
            for nonce in range(20):
                await messages.send_message(Ping(nonce=nonce))
                assert await messages.receive_message() == Pong(nonce=nonce)


async def test_untrusted_node_is_refused_in_both_directions() -> None:
    here, there = Identity.generate(), Identity.generate()
    # The other node trusts nobody: our connection is refused by it.
    async with serving_node(there, []) as process, local_node(here, [there]) as endpoint:
        port = int(str((await read_json_line(process))["port"]))
        with pytest.raises(ConnectionClosed) as caught:
            await endpoint.connect(("127.0.0.1", port), there.public_key)
        assert caught.value.by_peer and caught.value.error_code == ErrorCode.PEER_NOT_TRUSTED
    # We trust nobody: the other node's connection to us is refused by us.
    async with local_node(here, []) as endpoint:
        args = node_args("connect", there, [here])
        args += ["--to", str(endpoint.local_address[1]), "--peer", here.public_key.hex()]
        process = await trio.lowlevel.open_process(args, stdout=subprocess.PIPE)
        try:
            result = await read_json_line(process)
        finally:
            await process.wait()
        assert result == {"ok": False, "error_code": ErrorCode.PEER_NOT_TRUSTED, "by_peer": True}
        assert endpoint.connections == []


async def test_node_keeps_serving_after_a_peer_sends_a_bad_frame() -> None:
    here, there, friend = Identity.generate(), Identity.generate(), Identity.generate()
    async with (
        serving_node(there, [here, friend]) as process,
        local_node(here, [there]) as endpoint,
        local_node(friend, [there]) as friend_endpoint,
    ):
        port = int(str((await read_json_line(process))["port"]))
        bystander = await friend_endpoint.connect(("127.0.0.1", port), there.public_key)
        offender = await endpoint.connect(("127.0.0.1", port), there.public_key)
        stream = await offender.open_stream()
        await stream.send_all(b"\x7f\xff\xff\xff" + b"x" * 100)  # a 2 GiB frame announced
        with pytest.raises(ConnectionClosed) as caught:
            await stream.receive_some()
        assert caught.value.by_peer and caught.value.error_code == WireErrorCode.FRAME_TOO_LARGE

        async with await MessageStream.open(bystander) as messages:
            await messages.send_message(Ping(nonce=1))
            assert await messages.receive_message() == Pong(nonce=1)
        await ping(endpoint, port, there, nonce=2)  # the offender may reconnect
        assert process.poll() is None


async def test_dead_peer_is_noticed_within_the_idle_timeout() -> None:
    here, there = Identity.generate(), Identity.generate()
    async with serving_node(there, [here]) as process, local_node(here, [there]) as endpoint:
        port = int(str((await read_json_line(process))["port"]))
        connection = await endpoint.connect(("127.0.0.1", port), there.public_key)
        stream = await connection.open_stream()
        await trio.sleep(IDLE * 1.5)  # keep-alives hold a quiet connection open
        assert connection.closed is None
        process.send_signal(signal.SIGKILL)
        killed_at = trio.current_time()
        with pytest.raises(ConnectionClosed) as caught:
            await stream.receive_some()
        noticed_after = trio.current_time() - killed_at
        assert caught.value.idle_timeout and not caught.value.by_peer
        assert noticed_after <= IDLE + 0.3, noticed_after  # scheduling slack only
