"""`exoquic trust list | add ID [--name NAME] | remove ID`: the devices this one trusts."""

from __future__ import annotations

import argparse
import hashlib
from typing import TYPE_CHECKING

from exoquic.cli.console import print_error
from exoquic.cli.options import Subcommands

if TYPE_CHECKING:
    from exoquic.identity.trust import TrustedPeer

# Command bodies import what they use: registering the commands stays cheap.


def register(commands: Subcommands) -> None:
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


def cmd_trust_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from exoquic.identity.trust import TrustStore, TrustStoreError
    from exoquic.terminal import print_table, whole

    try:
        peers = TrustStore.open().list()
    except TrustStoreError as exc:
        print_error("trust", exc)
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
        print_error("trust", exc)
        return 2
    except TrustStoreError as exc:  # TrustConflictError names the holder and the fix
        print_error("trust", exc)
        return 1
    except ValueError as exc:  # a name that is not a device name
        print_error("trust", exc)
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
        print_error("trust", exc)
        return 2
    except KeyError:
        print_error("trust", f"{args.node_id} is not a trusted device (see `exoquic trust list`)")
        return 1
    except TrustStoreError as exc:
        print_error("trust", exc)
        return 1
    print(f"No longer trusting {peer.node_id} ({peer.name}).")
    return 0
