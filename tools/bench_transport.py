"""Benchmark the authenticated QUIC transport between two processes on loopback.

    uv run python tools/bench_transport.py [--rounds 2000] [--bulk-mib 64] [--datagram N]

Spawns a second process serving an exoquic endpoint and a plain TCP socket,
then measures, over each:

- the round trip of one decode-step activation (576 float16 values = 1,152
  bytes) as one length-prefixed frame, echoed back (median and p99);
- the transfer of one 64 MiB frame (a big tensor), acknowledged by the peer.

"cpu ms" is the measuring process's CPU time per round trip (the serving
process spends about as much): what the transport costs regardless of how
busy the machine is. `--pin` puts the two processes on different CPUs.

The plain TCP numbers (blocking sockets, TCP_NODELAY) are the floor: what
Python and the kernel's loopback cost without QUIC, TLS and trio.
`--datagram` overrides the datagram size used towards loopback peers (the
default is `TransportConfig.loopback_datagram_size`; 1350 shows the per-packet
cost a LAN path pays).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from exoquic.identity.keys import Identity
from exoquic.transport import MessageStream, QuicStream, TransportConfig, open_endpoint

ACTIVATION_BYTES = 576 * 2  # one token's hidden state, float16
ECHO_LIMIT = 64 * 1024  # frames up to this size are echoed, bigger ones acknowledged
HEADER = struct.Struct(">I")


def reply_to(frame: bytes) -> bytes:
    """Echo small frames; acknowledge big ones with their length (8 bytes)."""
    return frame if len(frame) <= ECHO_LIMIT else len(frame).to_bytes(8, "big")


# --- the serving process ---------------------------------------------------------


async def serve_quic_stream(stream: QuicStream) -> None:
    messages = MessageStream(stream, max_frame_size=1 << 30)
    while (frame := await messages.receive_frame()) is not None:
        await messages.send_frame(reply_to(frame))


def serve_tcp(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve_tcp_connection, args=(conn,), daemon=True).start()


def serve_tcp_connection(conn: socket.socket) -> None:
    with conn:
        while (frame := tcp_receive_frame(conn)) is not None:
            tcp_send_frame(conn, reply_to(frame))


async def serve(args: argparse.Namespace) -> None:
    private_key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(args.key))
    trusted = bytes.fromhex(args.trust)
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=serve_tcp, args=(listener,), daemon=True).start()
    async with open_endpoint(
        Identity.from_private_key(private_key),
        verify_peer=lambda key: key == trusted,
        stream_handler=serve_quic_stream,
        host="127.0.0.1",
        config=transport_config(args),
    ) as endpoint:
        ports = {"quic": endpoint.local_address[1], "tcp": listener.getsockname()[1]}
        print(json.dumps(ports), flush=True)
        await trio.sleep_forever()


# --- TCP framing (blocking sockets) ----------------------------------------------


def tcp_send_frame(conn: socket.socket, payload: bytes) -> None:
    conn.sendall(HEADER.pack(len(payload)))
    conn.sendall(payload)


def tcp_receive_exactly(conn: socket.socket, size: int) -> bytes | None:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = conn.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return bytes(buffer)


def tcp_receive_frame(conn: socket.socket) -> bytes | None:
    header = tcp_receive_exactly(conn, HEADER.size)
    return None if header is None else tcp_receive_exactly(conn, HEADER.unpack(header)[0])


# --- the measuring process -------------------------------------------------------


@dataclass
class Result:
    rtts: list[float]
    cpu_per_rtt: float  # this process's CPU seconds per round trip
    bulk_seconds: float

    def line(self, name: str, bulk_bytes: int) -> str:
        median = statistics.median(self.rtts) * 1e3
        p99 = statistics.quantiles(self.rtts, n=100)[98] * 1e3
        rate = bulk_bytes / self.bulk_seconds / 1e6
        cpu = self.cpu_per_rtt * 1e3
        return f"{name:<24} {median:9.3f} {p99:9.3f} {cpu:9.3f} {rate:10.1f}"


def bench_tcp(port: int, rounds: int, bulk: bytes) -> Result:
    activation = bytes(ACTIVATION_BYTES)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(rounds // 10):  # warm up
            tcp_send_frame(conn, activation)
            assert tcp_receive_frame(conn) == activation
        rtts = []
        cpu = time.process_time()
        for _ in range(rounds):
            start = time.perf_counter()
            tcp_send_frame(conn, activation)
            assert tcp_receive_frame(conn) == activation
            rtts.append(time.perf_counter() - start)
        cpu_per_rtt = (time.process_time() - cpu) / rounds
        start = time.perf_counter()
        tcp_send_frame(conn, bulk)
        assert tcp_receive_frame(conn) == len(bulk).to_bytes(8, "big")
        return Result(rtts, cpu_per_rtt, time.perf_counter() - start)


async def bench_quic(
    args: argparse.Namespace, client: Identity, server_key: bytes, port: int, bulk: bytes
) -> Result:
    activation = bytes(ACTIVATION_BYTES)
    async with open_endpoint(
        client,
        verify_peer=lambda key: False,
        host="127.0.0.1",
        config=transport_config(args),
    ) as endpoint:
        connection = await endpoint.connect(("127.0.0.1", port), server_key)
        stream = MessageStream(await connection.open_stream(), max_frame_size=1 << 30)
        for _ in range(args.rounds // 10):  # warm up
            await stream.send_frame(activation)
            assert await stream.receive_frame() == activation
        rtts = []
        cpu = time.process_time()
        for _ in range(args.rounds):
            start = time.perf_counter()
            await stream.send_frame(activation)
            assert await stream.receive_frame() == activation
            rtts.append(time.perf_counter() - start)
        cpu_per_rtt = (time.process_time() - cpu) / args.rounds
        start = time.perf_counter()
        await stream.send_frame(bulk)
        assert await stream.receive_frame() == len(bulk).to_bytes(8, "big")
        seconds = time.perf_counter() - start
        await stream.aclose()
        return Result(rtts, cpu_per_rtt, seconds)


def transport_config(args: argparse.Namespace) -> TransportConfig:
    if args.datagram is None:
        return TransportConfig(max_frame_size=1 << 30)
    return TransportConfig(max_frame_size=1 << 30, loopback_datagram_size=args.datagram)


def measure(args: argparse.Namespace) -> None:
    server, client = Identity.generate(), Identity.generate()
    server_private = server.private_key.private_bytes(
        Encoding.Raw, PrivateFormat.Raw, NoEncryption()
    )
    command = [sys.executable, __file__, "serve", "--key", server_private.hex()]
    command += ["--trust", client.public_key.hex()]
    if args.datagram is not None:
        command += ["--datagram", str(args.datagram)]
    if args.pin:
        command.append("--pin")
    with subprocess.Popen(command, stdout=subprocess.PIPE) as process:
        try:
            assert process.stdout is not None
            ports = json.loads(process.stdout.readline())
            bulk = bytes(args.bulk_mib << 20)
            tcp = bench_tcp(ports["tcp"], args.rounds, bulk)
            quic = trio.run(bench_quic, args, client, server.public_key, ports["quic"], bulk)
        finally:
            process.kill()
    datagram = args.datagram or TransportConfig().loopback_datagram_size
    print(f"activation {ACTIVATION_BYTES} B round trips: {args.rounds}; bulk {args.bulk_mib} MiB")
    print(f"{'':<24} {'median ms':>9} {'p99 ms':>9} {'cpu ms':>9} {'bulk MB/s':>10}")
    print(tcp.line("plain TCP (floor)", len(bulk)))
    print(quic.line(f"exoquic QUIC ({datagram} B)", len(bulk)))


def pin_to_cpu(index: int) -> None:
    """Keep this process on one CPU, so the two processes do not preempt each other."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        os.sched_setaffinity(0, {cpus[index % len(cpus)]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="measure", choices=["measure", "serve"])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--bulk-mib", type=int, default=64)
    parser.add_argument("--datagram", type=int, default=None)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--trust", help=argparse.SUPPRESS)
    parser.add_argument(
        "--pin", action="store_true", help="pin the two processes to different CPUs (Linux)"
    )
    args = parser.parse_args()
    if args.pin:
        pin_to_cpu(1 if args.mode == "serve" else 0)
    if args.mode == "serve":
        trio.run(serve, args)
    else:
        measure(args)


if __name__ == "__main__":
    main()
