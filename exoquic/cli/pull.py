"""`exoquic pull NAME[:TAG] [--layers START-END]`: download a model by name.

The names and the downloads are `exoquic.download.pull`'s; this is the command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from exoquic import defaults
from exoquic.cli.models import parse_layers
from exoquic.cli.options import Subcommands

if TYPE_CHECKING:
    from rich.console import Console

    from exoquic.download.pull import PullTarget

# Command bodies import what they use: registering the command stays cheap.


def register(commands: Subcommands) -> None:
    pull = commands.add_parser(
        "pull",
        help="download a model by name (qwen2.5:7b, owner/repo:Q4_K_M, owner/repo/FILE.gguf)",
    )
    pull.add_argument(
        "name",
        metavar="NAME[:TAG]",
        help="registry name, owner/repo[:QUANT], owner/repo/FILE.gguf, or a safetensors repo",
    )
    pull.add_argument(
        "--layers",
        type=parse_layers,
        metavar="START-END",
        help="only these layers, e.g. 0-15 (a GGUF is fetched by byte ranges)",
    )
    pull.add_argument("--revision", default="main", help="branch, tag or commit")
    pull.add_argument(
        "--max-context",
        type=int,
        default=defaults.MAX_CONTEXT,
        metavar="TOKENS",
        help=f"context to check the memory for (default: {defaults.MAX_CONTEXT}, as `up`)",
    )
    pull.set_defaults(handler=cmd_pull)


def cmd_pull(args: argparse.Namespace) -> int:
    from rich.console import Console

    from exoquic.download.errors import DownloadError
    from exoquic.download.progress import terminal_progress
    from exoquic.download.pull import pull

    logging.getLogger("httpx2").setLevel(logging.WARNING)
    console = Console(stderr=True)
    try:
        target = _pull_target(args.name, args.revision)
        if target is None:
            return 0
        _say_fit(target, args, console)
        with terminal_progress(target.label, console) as progress:
            path = pull(target, layers=args.layers, revision=args.revision, progress=progress)
    except DownloadError as e:
        print(f"exoquic: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _pull_target(name: str, revision: str) -> PullTarget | None:
    """The resolved target; None (after saying so) for a model that ships with exoquic."""
    from exoquic.download.pull import parse_name, resolve

    target = parse_name(name)
    if target.entry is not None and target.entry.bundled_package:
        print(f"{target.entry.id} ships with exoquic ({target.entry.bundled_package}): "
              "nothing to download", file=sys.stderr)  # fmt: skip
        return None
    return resolve(target, revision)


def _say_fit(target: PullTarget, args: argparse.Namespace, console: Console) -> None:
    """Warn before downloading a model this machine cannot hold (it may still join a ring)."""
    import psutil

    from exoquic.download.gguf import read_gguf_header
    from exoquic.download.pull import footprint_of_gguf
    from exoquic.topology.fit import ModelFootprint, check_fit

    model_id = target.entry.id if target.entry else target.label
    if target.filename is not None:
        header = read_gguf_header(target.repo_id, target.filename, revision=args.revision)
        footprint = footprint_of_gguf(header, model_id)
    elif target.entry is not None:  # safetensors: the registry's sizes, KV cache unknown
        e = target.entry
        layers = (e.bytes_per_layer,) * e.num_layers
        head = 0 if e.tie_word_embeddings else e.head_bytes
        footprint = ModelFootprint(model_id, layers, e.embed_bytes, head, 0)
    else:
        return
    fit = check_fit(footprint, args.max_context, [psutil.virtual_memory().available])
    if fit.fits:
        console.print(fit.message(), highlight=False, soft_wrap=True)
    else:
        console.print(f"warning: {fit.message()}", style="yellow", highlight=False, soft_wrap=True)
