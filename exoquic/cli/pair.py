"""`exoquic pair [CODE]`: trust another device by a short code.

`exoquic pair` runs its own QUIC endpoint on a free port for as long as the
code is shown; a node running `exoquic up` on the same device keeps running
(its trust store is the same file, re-read on every change).
"""

from __future__ import annotations

import argparse
import socket
from typing import TYPE_CHECKING

from exoquic import defaults
from exoquic.cli.console import print_error
from exoquic.cli.options import Subcommands

if TYPE_CHECKING:
    from exoquic.discovery.multicast import MulticastSettings
    from exoquic.identity.keys import Identity
    from exoquic.identity.trust import TrustStore

# Command bodies import what they use: registering the commands stays cheap.

FALLBACK_NAME = "exoquic"


def register(commands: Subcommands) -> None:
    pair = commands.add_parser(
        "pair",
        help="trust another device: show a code here, or type the code shown there",
        description="Without CODE, show a one-time code and wait for the other device. "
        "With CODE (as shown on the other device), find that device and pair with it.",
    )
    pair.add_argument("code", nargs="?", help="the code `exoquic pair` shows on the other device")
    pair.add_argument(
        "--addr",
        type=parse_address,
        metavar="HOST:PORT",
        help="the other device's address and the port it printed (instead of searching the LAN)",
    )
    pair.add_argument("--name", help="this device's name, shown to the other (default: host name)")
    pair.add_argument(
        "--port",
        type=int,
        default=0,
        help="UDP port to listen on while showing a code (default: any free port)",
    )
    pair.add_argument(
        "--lifetime",
        type=_positive,
        default=defaults.PAIRING_CODE_LIFETIME_S,
        metavar="SECONDS",
        help=f"how long a shown code stays valid (default: {defaults.PAIRING_CODE_LIFETIME_S:g})",
    )
    pair.add_argument(
        "--wait",
        type=_positive,
        default=defaults.PAIRING_SEARCH_S,
        metavar="SECONDS",
        help="how long to look for the other device on the LAN "
        f"(default: {defaults.PAIRING_SEARCH_S:g})",
    )
    pair.add_argument(
        "--multicast-port",
        type=int,
        default=defaults.MULTICAST_PORT,
        help=f"UDP port of the discovery multicast group (default: {defaults.MULTICAST_PORT})",
    )
    pair.add_argument(
        "--interfaces",
        type=lambda text: tuple(text.split(",")),
        metavar="IF[,IF...]",
        help="network interfaces to announce and listen on (default: all that do multicast)",
    )
    pair.set_defaults(handler=cmd_pair)


def parse_address(text: str) -> tuple[str, int]:
    """`"192.0.2.5:41234"` or `"[fe80::1]:41234"` -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def default_device_name() -> str:
    """The host name without its domain, or "exoquic" when it is unusable."""
    from exoquic.identity.node_id import MAX_NAME_LENGTH, is_valid_device_name

    name = socket.gethostname().split(".")[0].strip()[:MAX_NAME_LENGTH]
    return name if is_valid_device_name(name) else FALLBACK_NAME


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def cmd_pair(args: argparse.Namespace) -> int:
    import logging

    import trio

    from exoquic.discovery.multicast import MulticastSettings
    from exoquic.identity.keys import IdentityError, load_or_create_identity
    from exoquic.identity.node_id import is_valid_device_name
    from exoquic.identity.trust import TrustStore, TrustStoreError
    from exoquic.pairing.lan import ANNOUNCE_INTERVAL
    from exoquic.pairing.protocol import PairingCodeError, parse_pairing_code

    name = args.name if args.name is not None else default_device_name()
    if not is_valid_device_name(name):
        print_error("pair", f"--name must be 1-64 printable characters, not {name!r}")
        return 2
    if args.code is None and args.addr is not None:
        print_error(
            "pair", "--addr is for the device that types the code: exoquic pair CODE --addr ..."
        )
        return 2
    try:
        code = parse_pairing_code(args.code) if args.code is not None else None
    except PairingCodeError as exc:
        print_error("pair", f"{exc}. Check the code shown on the other device.")
        return 2
    try:
        identity = load_or_create_identity()
        trust = TrustStore.open()
    except (IdentityError, TrustStoreError) as exc:
        print_error("pair", exc)
        return 1
    if not getattr(args, "verbose", False):
        # Which interfaces multicast uses is noise next to the code; -v shows it.
        logging.getLogger("exoquic.discovery").setLevel(logging.WARNING)
    settings = MulticastSettings(
        port=args.multicast_port, interfaces=args.interfaces, interval=ANNOUNCE_INTERVAL
    )
    _say(f"This device: {name}  {identity.node_id}")
    if code is None:
        return trio.run(_show_code, identity, trust, name, settings, args)
    return trio.run(_type_code, identity, trust, name, code, settings, args)


async def _show_code(
    identity: Identity,
    trust: TrustStore,
    name: str,
    settings: MulticastSettings,
    args: argparse.Namespace,
) -> int:
    import trio

    from exoquic.pairing.lan import announce_pairing
    from exoquic.pairing.service import PairingFailed, open_pairing_offer

    try:
        async with open_pairing_offer(
            identity, trust, name=name, port=args.port, lifetime=args.lifetime
        ) as offer:
            code, port = offer.code.text, offer.port
            _say(f"Pairing code: {code}  (valid for {args.lifetime:g} s, one attempt)")
            _say(f"Listening on UDP port {port} (QUIC).")
            async with trio.open_nursery() as nursery:
                try:
                    await nursery.start(announce_pairing, port, name, settings)
                    _say("Announcing this device on the LAN.")
                except OSError as exc:
                    _say(f"Cannot announce on the LAN ({exc.strerror or exc}).")
                _say(f"On the other device run:  exoquic pair {code}")
                _say(f"  (if it does not find this one, add --addr <this device's IP>:{port})")
                _say("Waiting for the other device...")
                try:
                    peer, failure = await offer.wait_result(), None
                except PairingFailed as exc:
                    peer, failure = None, exc
                nursery.cancel_scope.cancel()
    except OSError as exc:
        print_error("pair", f"cannot listen on UDP port {args.port}: {exc.strerror or exc}")
        return 1
    if peer is None:
        print_error("pair", failure)
        return 1
    _say_paired(peer.name, peer.node_id)
    return 0


async def _type_code(
    identity: Identity,
    trust: TrustStore,
    name: str,
    code: str,
    settings: MulticastSettings,
    args: argparse.Namespace,
) -> int:
    from exoquic.pairing.lan import find_pairing_device
    from exoquic.pairing.service import PairingFailed, pair_with

    try:
        if args.addr is not None:
            addresses = [args.addr]
        else:
            _say(f"Looking for the device showing the code on the LAN (up to {args.wait:g} s)...")
            device = await find_pairing_device(wait=args.wait, settings=settings)
            _say(f"Found {device}.")
            addresses = device.endpoints
        peer = await pair_with(identity, trust, code, addresses, name=name)
    except PairingFailed as exc:
        print_error("pair", exc)
        return 1
    _say_paired(peer.name, peer.node_id)
    return 0


def _say(line: str) -> None:
    print(line, flush=True)  # flushed: the other device's user is waiting on it


def _say_paired(name: str, node_id: str) -> None:
    _say(f"Paired with: {name}  {node_id}")
    _say(
        "Both devices now trust each other. Check that this id is the one shown "
        f"as 'This device' on {name}; if not, run `exoquic trust remove {node_id}`."
    )
