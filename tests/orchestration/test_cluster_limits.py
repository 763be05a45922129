"""What one trusted but misbehaving peer can hold on a node: in-process rings
over real QUIC on loopback (see test_cluster.py), with the peer played by hand."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import cbor2
import numpy as np
import pytest
import trio
from test_cluster import MIB, PROMPTS, Lab, generate, hello, reference, wait_plan

from exoquic.identity.keys import Identity
from exoquic.identity.trust import TrustStore
from exoquic.orchestration.links import introduce
from exoquic.orchestration.ring import RingSettings
from exoquic.topology import DeviceCapabilities
from exoquic.transport import (
    Connection,
    ErrorCode,
    MessageStream,
    StreamReset,
    open_endpoint,
)
from exoquic.wire.errors import ErrorCode as WireErrorCode
from exoquic.wire.framing import frame_header
from exoquic.wire.messages import (
    Forward,
    Hello,
    Release,
    RequestFailed,
    TokenResult,
)

__all__ = ["reference"]  # the fixture, shared with test_cluster.py

pytestmark = pytest.mark.timeout(120)

# A peer too small to be given layers: it links and joins, but plans leave it out.
SMALL_DEVICE = DeviceCapabilities(MIB, MIB, "x", "mlx").to_dict()


def x_hello(x: Identity) -> Hello:
    return hello(x, SMALL_DEVICE)


@asynccontextmanager
async def connected_as(lab: Lab, name: str, to: str) -> AsyncIterator[Connection]:
    """A connection from trusted peer `name` (driven by the test) to node `to`."""
    me = lab.identities[name]
    trust = TrustStore.open(lab.homes[name])
    async with open_endpoint(me, verify_peer=trust.is_trusted, host="127.0.0.1") as endpoint:
        address = ("127.0.0.1", lab.ports[to])
        yield await endpoint.connect(address, lab.identities[to].public_key)


async def test_a_message_of_millions_of_items_closes_that_link_at_once(
    tmp_path: Path, reference: dict[tuple[int, ...], list[int]]
) -> None:
    lab = Lab(tmp_path, ["a", "b", "x"])
    x = lab.identities["x"]
    # 4 Mi one-byte items: a 4 MiB frame, smaller than many a Forward.
    junk = {"type": "model_progress", "v": 1, "model": [0] * (4 << 20)}
    async with lab.node("a") as a, lab.node("b") as b:
        await wait_plan([a, b], 2)
        async with connected_as(lab, "x", "a") as connection:
            messages = await MessageStream.open(connection)
            await introduce(messages, x_hello(x))
            await messages.send_frame(cbor2.dumps(junk))
            sent = time.perf_counter()
            with trio.fail_after(5):
                closed = await connection.wait_closed()
            # Refused from its item count before decoding (which took 2.5 s here).
            assert time.perf_counter() - sent < 1.0
        assert closed.by_peer and closed.error_code == WireErrorCode.MALFORMED_MESSAGE
        await wait_plan([a, b], 2)  # the a-b link never noticed
        assert await generate(a, PROMPTS[0]) == reference[tuple(PROMPTS[0])][:12]


async def test_a_hello_frame_over_its_size_is_refused_before_buffering(tmp_path: Path) -> None:
    lab = Lab(tmp_path, ["a", "x"])
    async with lab.node("a"), connected_as(lab, "x", "a") as connection:
        stream = await connection.open_stream()
        await stream.send_all(frame_header(Hello.MAX_SIZE + 1) + b"\xa0")
        with trio.fail_after(5):
            closed = await connection.wait_closed()
        assert closed.error_code == WireErrorCode.FRAME_TOO_LARGE


async def test_one_link_per_connection_and_a_link_per_connection_from_a_key(tmp_path: Path) -> None:
    lab = Lab(tmp_path, ["a", "x"])
    x = lab.identities["x"]
    async with lab.node("a") as a, connected_as(lab, "x", "a") as first:
        link = await MessageStream.open(first)
        await introduce(link, x_hello(x))
        # A second link stream on the same connection is refused; the first stays.
        second = await MessageStream.open(first)
        await second.send_message(x_hello(x))
        with trio.fail_after(5), pytest.raises(StreamReset) as caught:
            await second.receive_message()
        assert caught.value.error_code == ErrorCode.STREAM_REFUSED
        assert first.closed is None and a.peers.live_peers() == [x.node_id]
        # A second connection from the same key carries a link of its own (a
        # peer links once per model's ring it shares); the first one stays.
        # (Too many from one key: tests/transport/test_handshake_admission.py.)
        async with connected_as(lab, "x", "a") as again:
            await introduce(await MessageStream.open(again), x_hello(x))
            endpoint = a.peers.endpoint
            assert endpoint is not None
            with trio.fail_after(5):  # (a also dials x's listed port: not counted)
                while len([c for c in endpoint.connections if not c.is_client]) < 2:
                    await trio.sleep(0.02)
            await trio.sleep(0.2)
            assert first.closed is None and again.closed is None
            assert a.peers.live_peers() == [x.node_id]


async def test_a_peer_cannot_open_more_caches_than_its_share(tmp_path: Path) -> None:
    lab = Lab(tmp_path, ["a", "x"])
    x = lab.identities["x"]
    limit = RingSettings(step_timeout=20.0, max_caches_per_peer=3)
    async with lab.node("a", ring=limit) as a, connected_as(lab, "x", "a") as connection:
        await wait_plan([a], 1)
        messages = await MessageStream.open(connection)
        await introduce(messages, x_hello(x))
        await trio.sleep(0.5)  # a takes x in (x gets no layers): the plan may move on
        await wait_plan([a], 1)
        plan = a.plans.state.active_plan()
        assert plan is not None
        tokens = np.asarray([1, 2, 3], np.int32)
        for i in range(5):
            forward = Forward(f"x{i}", plan.version, 0, tokens, x.node_id, sampling={})
            await messages.send_message(forward)
        refused: list[RequestFailed] = []
        answered: list[str] = []  # a holds the whole model: it samples and answers x
        with trio.fail_after(10):
            while len(refused) < 2 or len(answered) < 3:
                message = await messages.receive_message()
                if isinstance(message, RequestFailed):
                    refused.append(message)
                elif isinstance(message, TokenResult):
                    answered.append(message.request_id)
        assert sorted(answered) == ["x0", "x1", "x2"]
        assert sorted(m.request_id for m in refused) == ["x3", "x4"]
        assert not any(m.retryable for m in refused)
        assert "the most one peer may" in refused[0].reason
        assert a.worker.engine.active_requests() == 3
        # Releasing one frees its place for the next.
        await messages.send_message(Release("x0"))
        await messages.send_message(Forward("x5", plan.version, 0, tokens, x.node_id, sampling={}))
        with trio.fail_after(10):
            while not isinstance(message := await messages.receive_message(), TokenResult):
                assert not isinstance(message, RequestFailed), message
        assert message.request_id == "x5" and connection.closed is None
