"""A 10 MB stream over a seeded lossy, duplicating, reordering channel (explicit time)."""

from __future__ import annotations

import hashlib
import heapq
import random
from dataclasses import dataclass, field

from aioquic.quic.events import StreamDataReceived
from transport_helpers import CLIENT_ADDR, SERVER_ADDR, Node, make_client, make_server

from exoquic.identity.certs import raw_public_key
from exoquic.transport.config import TransportConfig
from exoquic.transport.session import Session, pin_key, pin_trust_store

SIZE = 10_000_000
WINDOW = 256 * 1024
HIGH_WATER = 256 * 1024


@dataclass(order=True)
class _Delivery:
    at: float
    seq: int
    data: bytes = field(compare=False)
    to_server: bool = field(compare=False)


class LossyChannel:
    """Drops, duplicates and delays (hence reorders) datagrams, from a fixed seed."""

    def __init__(self, rng: random.Random, *, drop: float, duplicate: float) -> None:
        self.rng, self.drop, self.duplicate = rng, drop, duplicate
        self.queue: list[_Delivery] = []
        self.seq = 0
        self.dropped = self.duplicated = 0

    def send(self, data: bytes, *, to_server: bool, now: float) -> None:
        if self.rng.random() < self.drop:
            self.dropped += 1
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        self.duplicated += copies - 1
        for _ in range(copies):
            # 5 ms +- 4 ms of latency: packets overtake each other.
            delay = 0.005 + self.rng.uniform(-0.004, 0.004)
            self.seq += 1
            heapq.heappush(self.queue, _Delivery(now + delay, self.seq, data, to_server))

    def next_time(self) -> float | None:
        return self.queue[0].at if self.queue else None

    def due(self, now: float) -> list[_Delivery]:
        out = []
        while self.queue and self.queue[0].at <= now:
            out.append(heapq.heappop(self.queue))
        return out


def test_ten_megabytes_survive_loss_duplication_and_reordering() -> None:
    alice, bob = Node.generate(), Node.generate()
    config = TransportConfig(receive_window=WINDOW, send_high_water=HIGH_WATER)
    client = make_client(alice, pin_key(raw_public_key(bob.key.public_key())), config=config)
    trust_all = pin_trust_store(lambda key: True, pairing=False)
    server = make_server(bob, client, trust_all, config=config)
    channel = LossyChannel(random.Random(0), drop=0.03, duplicate=0.03)
    payload = random.Random(1).randbytes(SIZE)
    received = hashlib.sha256()
    received_bytes = 0
    unread = bytearray()  # the receiving application's buffer
    max_unread = 0
    sent = 0
    now = 0.0
    read_rng = random.Random(2)

    while received_bytes < SIZE:
        assert now < 600, "transfer stalled"
        # The sender writes only while aioquic holds less than the high-water mark.
        if client.established:
            while sent < SIZE and client.quic.send_buffered(0) < HIGH_WATER:
                chunk = payload[sent : sent + 64 * 1024]
                sent += len(chunk)
                client.quic.send_stream_data(0, chunk, end_stream=sent == SIZE)
        # The receiver reads a random amount, and only then grants more credit.
        for event in _events(server):
            if isinstance(event, StreamDataReceived):
                unread += event.data
        max_unread = max(max_unread, len(unread))
        take = min(len(unread), read_rng.randrange(0, 2 * WINDOW))
        if take:
            received.update(unread[:take])
            del unread[:take]
            received_bytes += take
            server.quic.consume(0, take)
        _events(client)
        now = _advance(client, server, channel, now)

    assert received.digest() == hashlib.sha256(payload).digest()
    assert max_unread <= WINDOW, "the peer sent beyond the credit we granted"
    assert channel.dropped > 100 and channel.duplicated > 100


def _events(session: Session) -> list[object]:
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events


def _advance(client: Session, server: Session, channel: LossyChannel, now: float) -> float:
    """Send what both sides have, then jump to the next delivery or timer."""
    for session, to_server in ((client, True), (server, False)):
        for data, _ in session.datagrams_to_send(now):
            channel.send(data, to_server=to_server, now=now)
    candidates = [t for t in (channel.next_time(), client.get_timer(), server.get_timer()) if t]
    now = max(now, min(candidates))
    for delivery in channel.due(now):
        if delivery.to_server:
            server.receive_datagram(delivery.data, CLIENT_ADDR, now)
        else:
            client.receive_datagram(delivery.data, SERVER_ADDR, now)
    for session in (client, server):
        timer = session.get_timer()
        if timer is not None and timer <= now:
            session.handle_timer(now)
    return now
