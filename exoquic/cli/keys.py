"""`exoquic token` (a new API key) and `exoquic id` (this device's node id and key)."""

from __future__ import annotations

import argparse
import sys

from exoquic.cli.options import Subcommands


def register(commands: Subcommands) -> None:
    token = commands.add_parser("token", help="create a new API key for this node")
    token.set_defaults(handler=cmd_token)
    show = commands.add_parser(
        "id",
        help="show this device's node id and key fingerprint (starts no node)",
        description="Print this device's node id and the fingerprint of its key, as other "
        "devices show them in `exoquic trust list` (the key is created if there is none yet).",
    )
    show.set_defaults(handler=cmd_id)


def cmd_token(args: argparse.Namespace) -> int:
    from exoquic.api.security import create_token, token_path

    token = create_token()
    print(token)
    print(
        f"saved to {token_path()}; clients send it as 'Authorization: Bearer <key>'",
        file=sys.stderr,
    )
    return 0


def cmd_id(args: argparse.Namespace) -> int:
    from exoquic import paths
    from exoquic.cli.trust import key_fingerprint
    from exoquic.identity.keys import load_or_create_identity

    identity = load_or_create_identity()
    print(f"node id:          {identity.node_id}")
    print(f"key fingerprint:  {key_fingerprint(identity.public_key)}")
    print(f"home:             {paths.home()}")
    return 0
