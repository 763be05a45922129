"""`exoquic status`: the cluster as the local node sees it."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from exoquic import defaults
from exoquic.cli.options import Subcommands


def register(commands: Subcommands) -> None:
    status = commands.add_parser("status", help="show the cluster as the local node sees it")
    status.add_argument(
        "--api-host",
        help="the node's API address (default: the node running in this home, "
        f"else {defaults.API_HOST})",
    )
    status.add_argument(
        "--api-port",
        type=int,
        help=f"the node's API port (default: as for --api-host, {defaults.API_PORT})",
    )
    status.add_argument("--json", action="store_true", help="print the raw /v1/topology JSON")
    status.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace) -> int:
    import json

    import httpx

    from exoquic.api.security import API_KEY_ENV, TokenFileError, read_token, token_path

    base = status_base_url(args.api_host, args.api_port)
    url = f"{base}/v1/topology"
    try:
        env_key = os.environ.get(API_KEY_ENV)
        key = env_key or read_token()
    except TokenFileError as exc:
        print(f"exoquic: {exc}", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(url, headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        print(f"exoquic: {unreachable_message(base, exc)}", file=sys.stderr)
        return 1
    if response.status_code != 200:
        key_source = None if not key else API_KEY_ENV if env_key else str(token_path())
        print(f"exoquic: {refusal_message(base, response, key_source)}", file=sys.stderr)
        return 1
    topology = response.json()
    if args.json:
        print(json.dumps(topology, indent=2))
    else:
        print_topology(topology)
    return 0


def status_base_url(host: str | None, port: int | None) -> str:
    """The API to ask: the flags, else the node running in this home (its api.json),
    else the default address."""
    from exoquic.local_api import api_url, find_local_api

    if host is None and port is None:
        local = find_local_api()
        if local is not None:
            return local.url
    return api_url(host or defaults.API_HOST, port or defaults.API_PORT)


def unreachable_message(base: str, exc: Exception) -> str:
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return f"the node at {base} did not answer within 10 s"
    return (
        f"no node answers at {base} ({exc}): start one with `exoquic up`, or name "
        "another with --api-host and --api-port"
    )


def refusal_message(base: str, response: Any, key_source: str | None) -> str:
    """What to do about a refused request; `key_source` says where the key sent came from."""
    from exoquic.api.security import API_KEY_ENV

    if response.status_code == 401 and key_source is None:
        return (
            f"this node needs its API key: set {API_KEY_ENV} to the key it was started "
            "with (`exoquic token` stores a new key in this home, which `exoquic up` "
            "uses from its next start)"
        )
    if response.status_code == 401:
        return (
            f"the node at {base} refused the API key from {key_source}: it was started "
            f"with another key. Set {API_KEY_ENV} to that key, or restart the node so it "
            "uses this one"
        )
    try:
        detail = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        detail = response.text[:200]
    return f"the node at {base} answered HTTP {response.status_code}: {detail}"


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
