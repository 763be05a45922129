"""Send hostile datagrams to the discovery group (run inside a test namespace).

    python forge_announcements.py forge --victim NODE_ID --interface-address 198.18.0.3
    python forge_announcements.py capture --victim NODE_ID --interface-address 198.18.0.3
    python forge_announcements.py send --datagram HEX --interface-address 198.18.0.3
    python forge_announcements.py flood --rate 600 --seconds 4 --interface-address 198.18.0.3

`forge` captures one real announcement of the victim, waits until the victim
has sent newer ones, then sends: the captured datagram again (replay), a copy
with its body altered (bad signature), an announcement signed by a fresh key
nobody trusts, and one claiming the victim's node id under that fresh key.
`capture` prints one announcement of the victim (hex) to replay later with
`send`, for example after the victim restarted. `flood` sends junk: random
bytes, and well-formed envelopes under random keys with random signatures,
from spoofed source addresses in the LAN's /24 (a raw socket), so per-source
limits do not stop it. Each prints one JSON line saying what it did.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import time

from exoquic.discovery.announcement import PROTOCOL_VERSION, encode_announcement, signed_bytes
from exoquic.discovery.multicast import MULTICAST_GROUP, MULTICAST_PORT
from exoquic.identity.keys import Identity
from exoquic.wire import cbor

GROUP = (MULTICAST_GROUP, MULTICAST_PORT)


def capture(sock: socket.socket, victim: str, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(deadline - time.monotonic())
        data, _ = sock.recvfrom(4096)
        body = cbor.loads(data)[2]
        if cbor.loads(body)["id"] == victim:
            return data
    raise TimeoutError(f"heard nothing from {victim}")


def forgeries(captured: bytes, victim: str) -> dict[str, bytes]:
    version, key, body, signature = cbor.loads(captured)
    fields = cbor.loads(body)
    altered = cbor.dumps(fields | {"port": 1, "addrs": ["198.18.0.99"]})
    stranger = Identity.generate()
    untrusted = encode_announcement(
        stranger,
        name="stranger",
        port=2,
        addresses=["198.18.0.99"],
        capabilities={},
        start_time=fields["start"] + 1,
        instance_id=bytes(16),
        sequence=1,
    )
    # The victim's id in a body signed (validly) by the stranger's key.
    impostor_body = cbor.dumps(fields | {"addrs": ["198.18.0.99"]})
    impostor_signature = stranger.sign(signed_bytes(version, stranger.public_key, impostor_body))
    return {
        "replay": captured,
        "bad_signature": cbor.dumps([version, key, altered, signature]),
        "untrusted": untrusted,
        "impostor": cbor.dumps([version, stranger.public_key, impostor_body, impostor_signature]),
    }


def junk(index: int) -> bytes:
    """Every other datagram random bytes, else an envelope under a random key."""
    if index % 2:
        return os.urandom(200)
    body = os.urandom(300)
    return cbor.dumps([PROTOCOL_VERSION, os.urandom(32), body, os.urandom(64)])


def spoofed(payload: bytes, index: int, subnet: str) -> bytes:
    """An IPv4 + UDP packet to the group from `subnet`.(10..249), TTL 1.

    Linux fills in the IP checksum, id and total length of an IP_HDRINCL
    packet; a UDP checksum of 0 means none (IPv4).
    """
    source = socket.inet_aton(f"{subnet}.{10 + index % 240}")
    udp = struct.pack("!HHHH", 40000 + index % 1000, GROUP[1], 8 + len(payload), 0)
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 1, socket.IPPROTO_UDP, 0, source,
        socket.inet_aton(GROUP[0]),
    )  # fmt: skip
    return ip + udp + payload


def flood(subnet: str, rate: float, seconds: float) -> int:
    """Send junk at `rate` datagrams/s for `seconds`; returns how many were sent."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # HDRINCL
    start = time.monotonic()
    sent = 0
    while (elapsed := time.monotonic() - start) < seconds:
        due = int(elapsed * rate) + 1
        while sent < due:
            raw.sendto(spoofed(junk(sent), sent, subnet), (GROUP[0], 0))
            sent += 1
        time.sleep(0.002)
    return sent


def open_socket(interface_address: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(GROUP)
    local = socket.inet_aton(interface_address)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(GROUP[0]) + local)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, local)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["forge", "capture", "send", "flood"])
    parser.add_argument("--interface-address", required=True)
    parser.add_argument("--victim")
    parser.add_argument("--datagram", help="hex, for send")
    parser.add_argument(
        "--wait", type=float, default=1.0, help="seconds between capture and replay"
    )
    parser.add_argument("--rate", type=float, default=600.0, help="datagrams/s, for flood")
    parser.add_argument("--seconds", type=float, default=4.0, help="for flood")
    args = parser.parse_args()
    sock = open_socket(args.interface_address)
    if args.mode == "capture":
        print(json.dumps({"captured": capture(sock, args.victim, timeout=10).hex()}), flush=True)
    elif args.mode == "send":
        sock.sendto(bytes.fromhex(args.datagram), GROUP)
        print(json.dumps({"sent": 1}), flush=True)
    elif args.mode == "flood":
        subnet = args.interface_address.rsplit(".", 1)[0]
        print(json.dumps({"sent": flood(subnet, args.rate, args.seconds)}), flush=True)
    else:
        captured = capture(sock, args.victim, timeout=10)
        time.sleep(args.wait)  # the victim moves on to newer sequence numbers
        sent = []
        for name, datagram in forgeries(captured, args.victim).items():
            sock.sendto(datagram, GROUP)
            sent.append(name)
        print(json.dumps({"sent": sent}), flush=True)


if __name__ == "__main__":
    main()
