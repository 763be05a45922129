"""Send hostile announcements to the discovery group (run inside a test namespace).

    python forge_announcements.py --victim NODE_ID --interface-address 198.18.0.3

Captures one real announcement of the victim, waits until the victim has sent
newer ones, then sends: the captured datagram again (replay), a copy with its
body altered (bad signature), an announcement signed by a fresh key nobody
trusts, and one claiming the victim's node id under that fresh key. Prints
one JSON line naming what was sent.
"""

from __future__ import annotations

import argparse
import json
import socket
import time

from exoquic.discovery.announcement import encode_announcement, signed_bytes
from exoquic.discovery.multicast import MULTICAST_GROUP, MULTICAST_PORT
from exoquic.identity.keys import Identity
from exoquic.wire import cbor


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--victim", required=True)
    parser.add_argument("--interface-address", required=True)
    parser.add_argument(
        "--wait", type=float, default=1.0, help="seconds between capture and replay"
    )
    args = parser.parse_args()
    group = (MULTICAST_GROUP, MULTICAST_PORT)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(group)
    local = socket.inet_aton(args.interface_address)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, socket.inet_aton(group[0]) + local)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, local)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    captured = capture(sock, args.victim, timeout=10)
    time.sleep(args.wait)  # the victim moves on to newer sequence numbers
    sent = []
    for name, datagram in forgeries(captured, args.victim).items():
        sock.sendto(datagram, group)
        sent.append(name)
    print(json.dumps({"sent": sent}), flush=True)


if __name__ == "__main__":
    main()
