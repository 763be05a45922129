"""`exoquic models list | download MODEL [--layers START-END] | rm MODEL`."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import TYPE_CHECKING

from exoquic.cli.options import Subcommands

if TYPE_CHECKING:
    from exoquic.download.cache import CachedModel
    from exoquic.models.registry import ModelEntry

# Command bodies import what they use: registering the commands stays cheap.

_LAYERS = re.compile(r"^(\d+)-(\d+)$")


def register(commands: Subcommands) -> None:
    models = commands.add_parser("models", help="list, download and remove models")
    actions = models.add_subparsers(title="actions", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="known models and what is cached")
    listing.set_defaults(handler=cmd_list)

    download = actions.add_parser("download", help="download a model (or some layers)")
    download.add_argument("model", help="model id from `exoquic models list`, or a hub repo id")
    download.add_argument(
        "--layers",
        type=parse_layers,
        metavar="START-END",
        help="only the files these layers need, e.g. 0-15 (default: all layers)",
    )
    download.add_argument("--revision", default="main", help="branch, tag or commit")
    download.set_defaults(handler=cmd_download)

    remove = actions.add_parser("rm", help="delete a model's cached files")
    remove.add_argument("model", help="model id or hub repo id")
    remove.set_defaults(handler=cmd_rm)


def parse_layers(text: str) -> tuple[int, int]:
    """`"4-11"` -> (4, 11), both inclusive."""
    match = _LAYERS.match(text.strip())
    if not match or int(match.group(1)) > int(match.group(2)):
        raise argparse.ArgumentTypeError(f"expected START-END with START <= END, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def hub_repo_for(model: str) -> str:
    """The hub repository of a registry id or alias; anything else is taken as a repo id."""
    from exoquic.models.registry import find_model

    entry = find_model(model)
    return entry.hf_repo if entry is not None else model


def cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from exoquic.download.cache import cached_models, default_cache_dir
    from exoquic.models.listing import REGISTRY_COLUMNS, WHOLE_COLUMNS, registry_row
    from exoquic.models.registry import list_models
    from exoquic.terminal import print_table, whole

    cached = {m.repo_id: m for m in cached_models(default_cache_dir())}
    table = whole(Table(*REGISTRY_COLUMNS, "cached"), *WHOLE_COLUMNS, "cached")
    for entry in list_models():
        # What `exoquic pull` fetched (the GGUF) and the safetensors, whichever is cached.
        in_cache = [cached.pop(r) for r in _repos_of(entry) if r in cached]
        table.add_row(
            *registry_row(entry, format_bytes), _cached_text(in_cache, entry.bundled_package)
        )
    blank = [""] * (len(REGISTRY_COLUMNS) - 2)
    for repo_id, model in sorted(cached.items()):
        table.add_row(repo_id, *blank, repo_id, _cached_text([model], bundled=None))
    console = Console()
    print_table(table, console)
    console.print(f"cache: {default_cache_dir()}", soft_wrap=True)
    return 0


def _repos_of(entry: ModelEntry) -> list[str]:
    return [r for r in (entry.gguf_repo, entry.hf_repo) if r]


def _cached_text(models: list[CachedModel], bundled: str | None) -> str:
    parts = [f"bundled GGUF ({bundled})"] if bundled else []
    parts += [m.summary() for m in models]
    return ", ".join(parts) or "-"


def cmd_download(args: argparse.Namespace) -> int:
    from rich.console import Console

    from exoquic.download.errors import DownloadError, ModelNotCachedError
    from exoquic.download.hub import download_model
    from exoquic.download.progress import terminal_progress

    # huggingface_hub's HTTP client logs every request at INFO; the bar says enough.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    repo_id = hub_repo_for(args.model)
    try:
        with terminal_progress(repo_id, Console(stderr=True)) as progress:
            path = download_model(
                repo_id, layers=args.layers, revision=args.revision, progress=progress
            )
    except ModelNotCachedError as e:  # only in offline mode: its advice is this command
        print(
            f"exoquic: {e.fact}. HF_HUB_OFFLINE keeps this download off the network: "
            "unset it to download.",
            file=sys.stderr,
        )
        return 1
    except DownloadError as e:
        print(f"exoquic: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    from exoquic.download.cache import RepoCache, default_cache_dir
    from exoquic.models.registry import find_model

    entry = find_model(args.model)
    repos = _repos_of(entry) if entry is not None else [args.model]
    removed = [r for r in repos if RepoCache(default_cache_dir(), r).remove()]
    for repo_id in removed:
        print(f"removed {repo_id}")
    if not removed:
        print(f"{' or '.join(repos)} is not cached", file=sys.stderr)
    return 0 if removed else 1


def format_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
