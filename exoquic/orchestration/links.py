"""Links: one authenticated QUIC connection to a peer, carrying ring messages both ways.

The node that dials opens one stream and sends `Hello`; the other answers with
its own `Hello` on the same stream. From then on both sides send any message
on that stream, in order, and each runs a receive loop on it. A link is dead
when its connection closes (QUIC idle timeout after a crash, or a clean close).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import trio

from exoquic.transport import Connection, ConnectionClosed, MessageStream, QuicStream, StreamReset
from exoquic.transport.errors import ErrorCode as TransportErrorCode
from exoquic.wire.errors import ErrorCode, RemoteProtocolError
from exoquic.wire.messages import PROTOCOL_VERSION, Hello, Message, decode_message, encode_message

HELLO_TIMEOUT = 5.0
SEND_TIMEOUT = 10.0


class LinkError(Exception):
    """The link cannot carry the message: the peer is gone or stopped reading."""


@dataclass
class LinkStatistics:
    """Counters over every link of a node (the hop-time split in `/v1/topology`)."""

    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0
    send_seconds: float = 0.0  # waiting for the stream to take the bytes

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Link:
    """A peer's connection and its message stream, after both sides said `Hello`."""

    messages: MessageStream
    hello: Hello
    stats: LinkStatistics
    _send_lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def node_id(self) -> str:
        return self.hello.node_id

    @property
    def connection(self) -> Connection:
        return self.messages.connection

    @property
    def alive(self) -> bool:
        return self.connection.closed is None

    async def send(self, message: Message) -> None:
        """Send one message whole, even if the caller is cancelled meanwhile.

        A frame cut in half would corrupt the stream for every request on it,
        so sending is shielded; a peer that takes more than SEND_TIMEOUT to
        accept it is cut off instead. Raises LinkError when the link is gone.
        """
        with trio.CancelScope(shield=True):
            started = time.perf_counter()
            payload = encode_message(message)
            encoded = time.perf_counter()
            with trio.move_on_after(SEND_TIMEOUT) as timer:
                try:
                    async with self._send_lock:
                        await self.messages.send_frame(payload)
                except (ConnectionClosed, StreamReset, trio.ClosedResourceError) as exc:
                    raise LinkError(f"link to {self.node_id} is closed: {exc}") from exc
            if timer.cancelled_caught:
                self.close("peer stopped reading")
                raise LinkError(f"{self.node_id} did not take a message in {SEND_TIMEOUT} s")
        self.stats.messages_sent += 1
        self.stats.bytes_sent += len(payload) + 4
        self.stats.encode_seconds += encoded - started
        self.stats.send_seconds += time.perf_counter() - encoded

    async def receive(self) -> Message | None:
        """The next message; None when the link ended. A malformed message
        closes the connection and raises RemoteProtocolError."""
        try:
            payload = await self.messages.receive_frame()
        except (ConnectionClosed, StreamReset, trio.ClosedResourceError):
            return None
        if payload is None:
            return None
        started = time.perf_counter()
        message = _decode(self.messages, payload)
        self.stats.decode_seconds += time.perf_counter() - started
        self.stats.messages_received += 1
        self.stats.bytes_received += len(payload) + 4
        return message

    def close(self, reason: str = "") -> None:
        self.connection.close(TransportErrorCode.NO_ERROR, reason)


async def introduce(messages: MessageStream, hello: Hello) -> Hello:
    """The dialer's side of the `Hello` exchange on a fresh stream: say ours,
    then the peer's (the accepting side is `receive_hello`, then `answer_hello`).

    Raises RemoteProtocolError (and closes the connection) when the peer's
    first message is not a valid Hello for the key it authenticated with.
    """
    with trio.fail_after(HELLO_TIMEOUT):
        await messages.send_message(hello)
        return await receive_hello(messages)


async def receive_hello(messages: MessageStream) -> Hello:
    """The peer's `Hello`, checked: the node id must be the key's, the protocol
    ours (the accepting side reads it first, to know which model's ring answers)."""
    with trio.fail_after(HELLO_TIMEOUT), messages.frame_limit(Hello.MAX_SIZE):
        theirs = await messages.receive_message()
    _check_hello(messages, theirs)
    assert isinstance(theirs, Hello)
    return theirs


async def answer_hello(messages: MessageStream, hello: Hello) -> None:
    """Send our `Hello` back on a stream whose peer spoke first."""
    with trio.fail_after(HELLO_TIMEOUT):
        await messages.send_message(hello)


class LinkGate:
    """One link per connection: the first stream the dialer opens carries it.

    A trusted peer could otherwise open a link on every stream it may open
    (aioquic allows 128 at a time), on its connection or on one we dialled,
    and each is a Hello to decode and a link to serve. Other streams are
    refused with STREAM_REFUSED; the connection and its link stay up.
    """

    def __init__(self) -> None:
        self._linked: weakref.WeakSet[Connection] = weakref.WeakSet()

    def admit(self, stream: QuicStream) -> bool:
        """Whether `stream`, opened by the peer, may carry a link (refused if not)."""
        connection = stream.connection
        if connection.is_client or connection in self._linked:
            stream.reset(TransportErrorCode.STREAM_REFUSED)
            return False
        self._linked.add(connection)
        return True


def _check_hello(messages: MessageStream, message: Message | None) -> None:
    connection = messages.connection
    problem = None
    if not isinstance(message, Hello):
        problem = f"expected hello, got {type(message).__name__}"
    elif message.protocol_version != PROTOCOL_VERSION:
        problem = f"node protocol {message.protocol_version} is not {PROTOCOL_VERSION}"
    elif message.node_id != connection.peer_node_id:
        problem = f"hello claims {message.node_id} but the key is {connection.peer_node_id}"
    if problem is not None:
        error = RemoteProtocolError(problem, ErrorCode.UNEXPECTED_MESSAGE)
        connection.close(error.error_code, problem[:200])
        raise error


def _decode(messages: MessageStream, payload: bytes) -> Message:
    try:
        return decode_message(payload)
    except RemoteProtocolError as exc:
        messages.connection.close(exc.error_code, str(exc)[:200])
        raise
