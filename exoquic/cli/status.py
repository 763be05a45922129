"""`exoquic status`: the cluster as the local node sees it."""

from __future__ import annotations

import argparse
from typing import Any

from exoquic.cli.options import Subcommands, add_local_api_options


def register(commands: Subcommands) -> None:
    status = commands.add_parser("status", help="show the cluster as the local node sees it")
    add_local_api_options(status, "/v1/topology")
    status.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    from exoquic.local_api import print_json

    return print_json("/v1/topology", args.api_host, args.api_port, args.json, print_topology)


def print_topology(topology: dict[str, Any]) -> None:
    """The topology as a table: one row per node, in ring order."""
    from rich.console import Console
    from rich.table import Table

    from exoquic.terminal import print_table, whole

    console = Console()
    version = topology.get("plan_version")
    status = topology.get("status", "?")
    plan = f"plan v{version}" if version is not None else "no plan yet"
    console.print(f"[bold]{topology.get('model')}[/] · {plan} · {status}")
    if topology.get("reason"):
        console.print(f"[red]{topology['reason']}[/]")
    table = Table("", "name", "node id", "engine", "memory", "layers", "address")
    whole(table, "node id", "address")
    for node in topology.get("nodes", []):
        table.add_row(*_row(node, topology.get("num_layers")))
    print_table(table, console)
    ring = topology.get("stats", {}).get("ring", {})
    if ring.get("steps"):
        per_step = ring["step_seconds"] / ring["steps"] * 1000
        console.print(f"this node: {ring['steps']} steps, {per_step:.1f} ms per step")


def _row(node: dict[str, Any], num_layers: int | None) -> list[str]:
    marker = "*" if node.get("self") else ("" if node.get("live") else "✗")
    memory = node.get("memory") or {}
    usable = memory.get("usable")
    layers = node.get("layers")
    return [
        marker,
        node.get("name") or "?",
        node.get("id", ""),
        node.get("engine") or "?",
        _gib(usable) if usable is not None else "?",
        f"{layers[0]}-{layers[1]}" + (f" of {num_layers}" if num_layers else "") if layers else "-",
        node.get("address") or ("this node" if node.get("self") else "-"),
    ]


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"
