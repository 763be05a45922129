"""`exoquic pull NAME[:TAG]` and `exoquic models list | download MODEL | rm MODEL`."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from exoquic.download.cache import CachedModel
    from exoquic.download.pull import PullTarget

# Command bodies import what they use: registering the commands stays cheap.

_LAYERS = re.compile(r"^(\d+)-(\d+)$")


def add_models_command(commands: argparse._SubParsersAction) -> None:
    """Register `exoquic models ...` on the CLI's subcommand parsers."""
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


def add_pull_command(commands: argparse._SubParsersAction) -> None:
    """Register `exoquic pull NAME[:TAG]` on the CLI's subcommand parsers."""
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
        default=2048,
        metavar="TOKENS",
        help="context to check the memory for (default: 2048, as `exoquic up`)",
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
    from exoquic.download.hub import HubSettings, list_repo
    from exoquic.download.pull import choose_file, parse_name

    target = parse_name(name)
    if target.entry is not None and target.entry.bundled_package:
        print(f"{target.entry.id} ships with exoquic ({target.entry.bundled_package}): "
              "nothing to download", file=sys.stderr)  # fmt: skip
        return None
    if target.filename is not None:
        return target
    listing = list_repo(target.repo_id, revision, HubSettings.from_env())
    return choose_file(target, listing.files)


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
    from exoquic.models.registry import list_models
    from exoquic.terminal import print_table, whole

    cached = {m.repo_id: m for m in cached_models(default_cache_dir())}
    table = whole(
        Table("model", "name", "layers", "hub repository", "cached"), "model", "hub repository"
    )
    for entry in list_models():
        gguf_repo = getattr(entry, "gguf_repo", None)  # GGUF sources, once the registry has them
        in_cache = [cached.pop(r) for r in (entry.hf_repo, gguf_repo) if r in cached]
        table.add_row(
            entry.id,
            entry.display_name,
            str(entry.num_layers),
            entry.hf_repo,
            _cached_text(in_cache, bundled=entry.bundled_package),
        )
    for repo_id, model in sorted(cached.items()):
        table.add_row(repo_id, "", "", repo_id, _cached_text([model], bundled=None))
    console = Console()
    print_table(table, console)
    console.print(f"cache: {default_cache_dir()}", soft_wrap=True)
    return 0


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

    repo_id = hub_repo_for(args.model)
    if RepoCache(default_cache_dir(), repo_id).remove():
        print(f"removed {repo_id}")
        return 0
    print(f"{repo_id} is not cached", file=sys.stderr)
    return 1


def format_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
