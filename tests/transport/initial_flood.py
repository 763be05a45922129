"""Floods a UDP port with junk QUIC Initials from one address, in its own process.

    python initial_flood.py --to PORT [--source 127.0.0.2] [--sources N] [--rate 2000]

Every datagram is 1200 bytes shaped like a client Initial (QUIC v1 long
header, a fresh random destination connection id, no token) with a random
payload, as an attacker needs no key to send. With `--sources N` it sends
from N loopback addresses in turn, starting at `--source` (Linux answers for
all of 127.0.0.0/8). Prints one line `ready` once the sockets are bound, then
sends `rate` datagrams a second until killed.
"""

from __future__ import annotations

import argparse
import ipaddress
import itertools
import os
import socket
import sys
import time

_INITIAL_V1 = 0xC3  # long header, fixed bit, Initial, 4-byte packet number
_SIZE = 1200


def junk_initial() -> bytes:
    head = bytes([_INITIAL_V1]) + (1).to_bytes(4, "big")
    head += bytes([8]) + os.urandom(8) + bytes([8]) + os.urandom(8)
    head += b"\x00"  # token length 0
    length = _SIZE - len(head) - 2
    head += (0x4000 | length).to_bytes(2, "big")  # a 2-byte varint
    return head + os.urandom(length)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--to", type=int, required=True)
    parser.add_argument("--source", default="127.0.0.2")
    parser.add_argument("--sources", type=int, default=1)
    parser.add_argument("--rate", type=float, default=2000.0)
    args = parser.parse_args(sys.argv[1:])
    first = ipaddress.ip_address(args.source)
    sockets = []
    for offset in range(args.sources):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((str(first + offset), 0))
        sockets.append(sock)
    print("ready", flush=True)
    target = ("127.0.0.1", args.to)
    started = time.monotonic()
    for sent, sock in enumerate(itertools.cycle(sockets), start=1):
        sock.sendto(junk_initial(), target)
        ahead = sent / args.rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)


if __name__ == "__main__":
    main()
