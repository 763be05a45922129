"""`python -m exoquic.discovery`: run discovery alone and print peer events.

One JSON object per line on stdout: `{"ready": node_id}` once running, then
`{"event": kind, "node_id": ..., "name": ..., "addresses": [...], ...}` per
event, and `{"statistics": {...}}` (multicast counters) when stopped with
SIGINT or SIGTERM. Useful to see what a machine hears, and used by the
network namespace tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from exoquic import defaults
from exoquic.discovery.multicast import MULTICAST_PORT, MulticastSettings
from exoquic.discovery.peers import PeerEvent
from exoquic.discovery.service import Discovery, open_discovery, parse_methods
from exoquic.identity.keys import load_or_create_identity
from exoquic.identity.trust import TrustStore


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m exoquic.discovery", description=__doc__)
    parser.add_argument("--home", type=Path, help="node home (identity, trust.json, peers.json)")
    parser.add_argument("--methods", default=defaults.DISCOVERY, type=parse_methods)
    parser.add_argument(
        "--port", type=int, default=defaults.NODE_PORT, help="QUIC port to announce"
    )
    parser.add_argument("--name", default="exoquic")
    parser.add_argument("--pairing", action="store_true", help="report untrusted nodes too")
    parser.add_argument("--group-port", type=int, default=MULTICAST_PORT)
    parser.add_argument("--interval", type=float, default=2.0, help="steady announce interval")
    parser.add_argument("--fast-interval", type=float, default=0.5)
    parser.add_argument("--missed", type=int, default=3, help="missed intervals before expiry")
    parser.add_argument("--interfaces", type=lambda s: tuple(s.split(",")), default=None)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    trio.run(run, args)


async def run(args: argparse.Namespace) -> None:
    identity = load_or_create_identity(args.home)
    trust = TrustStore.open(args.home)
    settings = MulticastSettings(
        port=args.group_port,
        interval=args.interval,
        fast_interval=args.fast_interval,
        missed_intervals=args.missed,
        interfaces=args.interfaces,
    )
    async with open_discovery(
        args.methods,
        identity=identity,
        trust=trust,
        port=args.port,
        name=args.name,
        capabilities={},
        peers_file=args.home / "peers.json" if args.home else None,
        multicast_settings=settings,
        pairing=args.pairing,
    ) as discovery:
        _print({"ready": identity.node_id})
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_print_events, discovery)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()
        if discovery.multicast is not None:
            _print({"statistics": asdict(discovery.multicast.table.statistics())})


async def _print_events(discovery: Discovery) -> None:
    async for event in discovery.events:
        _print(_event_json(event))


def _event_json(event: PeerEvent) -> dict[str, Any]:
    peer = event.peer
    return {
        "event": event.kind.value,
        "node_id": peer.node_id,
        "name": peer.name,
        "addresses": list(peer.addresses),
        "port": peer.port,
        "source": peer.source,
    }


def _print(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
