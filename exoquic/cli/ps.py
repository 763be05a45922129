"""`exoquic ps`: the models the local node has loaded, where, and until when."""

from __future__ import annotations

import argparse
import time
from datetime import datetime
from typing import Any

from exoquic.cli.options import Subcommands, add_local_api_options

NEVER_YEAR = 2300  # Ollama's "kept forever" is a date in 2318


def register(commands: Subcommands) -> None:
    ps = commands.add_parser(
        "ps", help="show the loaded models: which nodes hold which layers, memory, expiry"
    )
    add_local_api_options(ps, "/api/ps")
    ps.set_defaults(handler=cmd_ps)


def cmd_ps(args: argparse.Namespace) -> int:
    from exoquic.local_api import print_json

    return print_json("/api/ps", args.api_host, args.api_port, args.json, show_running)


def show_running(running: dict[str, Any]) -> None:
    print_models(running.get("models", []))


def print_models(models: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    from exoquic.terminal import print_table, whole

    console = Console()
    if not models:
        console.print("no model is loaded")
        return
    table = Table("model", "nodes and layers", "memory", "requests", "expires")
    whole(table, "model")
    for model in models:
        table.add_row(*model_row(model, time.time()))
    print_table(table, console)


def model_row(model: dict[str, Any], now: float) -> list[str]:
    """One loaded model's cells (pure: `now` is the wall clock)."""
    name = str(model.get("name") or model.get("model") or "?")
    if model.get("default"):
        name += " (default)"
    holders = model.get("nodes") or []
    where = ", ".join(
        f"{h.get('name') or h.get('id', '?')} {h['layers'][0]}-{h['layers'][1]}"
        for h in holders
        if h.get("layers")
    )
    from exoquic.topology.fit import format_size

    size = model.get("size_needed") or model.get("size") or 0
    expires = (
        "when its peers let go"
        if model.get("kept_for_peers")
        else expiry_text(model.get("expires_at"), now)
    )
    return [name, where or "-", format_size(int(size)), str(model.get("running", 0)), expires]


def expiry_text(expires_at: object, now: float) -> str:
    """`never`, `in 4m 12s`, or `now` for an RFC 3339 time (Ollama's `expires_at`)."""
    if not isinstance(expires_at, str):
        return "?"
    try:
        when = datetime.fromisoformat(expires_at.replace("Z", "+00:00"))
    except ValueError:
        return expires_at
    if when.year >= NEVER_YEAR:
        return "never"
    left = when.timestamp() - now
    if left <= 0:
        return "now"
    minutes, seconds = divmod(int(left), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"in {hours}h {minutes}m"
    return f"in {minutes}m {seconds}s" if minutes else f"in {seconds}s"
