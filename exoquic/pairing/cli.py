"""`exoquic pair [CODE]` and `exoquic trust list | add ID [--name NAME] | remove ID`.

`exoquic pair` runs its own QUIC endpoint on a free port for as long as the
code is shown; a node running `exoquic up` on the same device keeps running
(its trust store is the same file, re-read on every change).
"""

from __future__ import annotations

import argparse
import hashlib
import socket
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exoquic.discovery.multicast import MulticastSettings
    from exoquic.identity.keys import Identity
    from exoquic.identity.trust import TrustedPeer, TrustStore

# Command bodies import what they use: registering the commands stays cheap.

DEFAULT_LIFETIME = 120.0  # exoquic.identity.pairing.CODE_LIFETIME (not imported here: spake2)
DEFAULT_WAIT = 10.0
DEFAULT_MULTICAST_PORT = 52416  # exoquic.discovery.multicast.MULTICAST_PORT
FALLBACK_NAME = "exoquic"


def add_pair_command(commands: argparse._SubParsersAction) -> None:
    """Register `exoquic pair [CODE]` on the CLI's subcommand parsers."""
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
        default=DEFAULT_LIFETIME,
        metavar="SECONDS",
        help=f"how long a shown code stays valid (default: {DEFAULT_LIFETIME:g})",
    )
    pair.add_argument(
        "--wait",
        type=_positive,
        default=DEFAULT_WAIT,
        metavar="SECONDS",
        help=f"how long to look for the other device on the LAN (default: {DEFAULT_WAIT:g})",
    )
    pair.add_argument(
        "--multicast-port",
        type=int,
        default=DEFAULT_MULTICAST_PORT,
        help=f"UDP port of the discovery multicast group (default: {DEFAULT_MULTICAST_PORT})",
    )
    pair.add_argument(
        "--interfaces",
        type=lambda text: tuple(text.split(",")),
        metavar="IF[,IF...]",
        help="network interfaces to announce and listen on (default: all that do multicast)",
    )
    pair.set_defaults(handler=cmd_pair)


def add_trust_command(commands: argparse._SubParsersAction) -> None:
    """Register `exoquic trust list | add | remove` on the CLI's subcommand parsers."""
    trust = commands.add_parser("trust", help="list, add and remove trusted devices")
    actions = trust.add_subparsers(title="actions", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="the devices this one trusts")
    listing.set_defaults(handler=cmd_trust_list)

    add = actions.add_parser(
        "add",
        help="trust a device by node id (its key is pinned when it first connects)",
        description="Trust a device by its node id, for setups where pairing cannot reach "
        "it (manual peers, Tailscale). Prefer `exoquic pair`: it pins the key itself.",
    )
    add.add_argument("node_id", metavar="ID", help="the device's node id, e.g. exq-XGYA-...")
    add.add_argument("--name", help="a name for the device (default: its node id)")
    add.set_defaults(handler=cmd_trust_add)

    remove = actions.add_parser("remove", aliases=["rm"], help="stop trusting a device")
    remove.add_argument("node_id", metavar="ID", help="the device's node id")
    remove.set_defaults(handler=cmd_trust_remove)


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


def _error(command: str, message: object) -> None:
    print(f"exoquic {command}: {message}", file=sys.stderr, flush=True)


# --- exoquic pair -----------------------------------------------------------


def cmd_pair(args: argparse.Namespace) -> int:
    import logging

    import trio

    from exoquic.discovery.multicast import MulticastSettings
    from exoquic.identity.keys import IdentityError, load_or_create_identity
    from exoquic.identity.node_id import is_valid_device_name
    from exoquic.identity.pairing import PairingCodeError, parse_pairing_code
    from exoquic.identity.trust import TrustStore, TrustStoreError
    from exoquic.pairing.lan import ANNOUNCE_INTERVAL

    name = args.name if args.name is not None else default_device_name()
    if not is_valid_device_name(name):
        _error("pair", f"--name must be 1-64 printable characters, not {name!r}")
        return 2
    if args.code is None and args.addr is not None:
        _error("pair", "--addr is for the device that types the code: exoquic pair CODE --addr ...")
        return 2
    try:
        code = parse_pairing_code(args.code) if args.code is not None else None
    except PairingCodeError as exc:
        _error("pair", f"{exc}. Check the code shown on the other device.")
        return 2
    try:
        identity = load_or_create_identity()
        trust = TrustStore.open()
    except (IdentityError, TrustStoreError) as exc:
        _error("pair", exc)
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
        _error("pair", f"cannot listen on UDP port {args.port}: {exc.strerror or exc}")
        return 1
    if peer is None:
        _error("pair", failure)
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
        _error("pair", exc)
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


# --- exoquic trust ----------------------------------------------------------


def cmd_trust_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from exoquic.identity.trust import TrustStore, TrustStoreError
    from exoquic.tables import print_table, whole

    try:
        peers = TrustStore.open().list()
    except TrustStoreError as exc:
        _error("trust", exc)
        return 1
    console = Console()
    if not peers:
        console.print("No trusted devices yet: pair one with `exoquic pair`.")
        return 0
    table = whole(Table("node id", "name", "key fingerprint", "added"), "node id")
    for peer in peers:
        table.add_row(peer.node_id, peer.name, key_fingerprint(peer.public_key), _added(peer))
    print_table(table, console)
    return 0


def key_fingerprint(public_key: bytes | None) -> str:
    """SHA-256 of the pinned raw key, first 64 bits in groups (or why there is none)."""
    if public_key is None:
        return "pinned at first connection"
    digest = hashlib.sha256(public_key).hexdigest()[:16]
    return " ".join(digest[i : i + 4] for i in range(0, 16, 4))


def _added(peer: TrustedPeer) -> str:
    return peer.added_at.astimezone().strftime("%Y-%m-%d %H:%M")


def cmd_trust_add(args: argparse.Namespace) -> int:
    from exoquic.identity.node_id import NodeIdError, parse_node_id
    from exoquic.identity.trust import TrustStore, TrustStoreError

    try:
        node_id = parse_node_id(args.node_id)
        peer = TrustStore.open().add_by_id(node_id, args.name if args.name else node_id)
    except NodeIdError as exc:
        _error("trust", exc)
        return 2
    except TrustStoreError as exc:  # TrustConflictError names the holder and the fix
        _error("trust", exc)
        return 1
    except ValueError as exc:  # a name that is not a device name
        _error("trust", exc)
        return 2
    pinned = "its key is pinned" if peer.public_key else "its key is pinned when it first connects"
    print(f"Trusting {peer.node_id} as {peer.name!r}; {pinned}.")
    return 0


def cmd_trust_remove(args: argparse.Namespace) -> int:
    from exoquic.identity.node_id import NodeIdError
    from exoquic.identity.trust import TrustStore, TrustStoreError

    try:
        peer = TrustStore.open().remove(args.node_id)
    except NodeIdError as exc:
        _error("trust", exc)
        return 2
    except KeyError:
        _error("trust", f"{args.node_id} is not a trusted device (see `exoquic trust list`)")
        return 1
    except TrustStoreError as exc:
        _error("trust", exc)
        return 1
    print(f"No longer trusting {peer.node_id} ({peer.name}).")
    return 0
