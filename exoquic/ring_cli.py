"""The ring's command-line parts: `exoquic up` cluster options and `exoquic status`."""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exoquic import paths
from exoquic.errors import StartupError

if TYPE_CHECKING:
    from exoquic.orchestration.cluster import ClusterSettings

DEFAULT_NODE_PORT = 52417  # orchestration.network.DEFAULT_NODE_PORT (not imported: slow)
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`"512M"`, `"1.5G"`, `"200MiB"`, `"1000000"` -> bytes (binary multiples)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 2G)")
    number, unit = match.groups()
    scale = 1024 ** "kmgt".find(unit.lower()) * 1024 if unit else 1
    return int(float(number) * scale)


def add_cluster_options(up: argparse.ArgumentParser) -> None:
    """The `exoquic up` options of the node protocol and discovery."""
    group = up.add_argument_group("cluster")
    group.add_argument("--name", help="this device's name in the cluster (default: the host name)")
    group.add_argument(
        "--node-host",
        default="0.0.0.0",
        help="address the node protocol (QUIC) listens on (default: 0.0.0.0; :: for IPv6)",
    )
    group.add_argument(
        "--node-port",
        type=int,
        default=DEFAULT_NODE_PORT,
        help=f"UDP port of the node protocol (default: {DEFAULT_NODE_PORT})",
    )
    group.add_argument(
        "--peers",
        type=Path,
        metavar="FILE",
        help="JSON file of peers for manual discovery (default: peers.json in EXOQUIC_HOME)",
    )
    group.add_argument(
        "--discovery",
        default="multicast,manual",
        metavar="METHODS",
        help="comma-separated: multicast, manual, tailscale (default: multicast,manual)",
    )
    group.add_argument(
        "--memory-limit",
        type=parse_size,
        metavar="SIZE",
        help="offer at most this much memory to the cluster, e.g. 4G (default: what is free)",
    )
    group.add_argument(
        "--peer-timeout",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="silence after which a peer counts as gone (default: 3)",
    )


def cluster_settings(args: argparse.Namespace) -> ClusterSettings:
    """ClusterSettings from `exoquic up`'s options, with this node's identity
    and trust store from EXOQUIC_HOME. Raises ValueError with a message for people."""
    from exoquic.discovery.service import parse_methods
    from exoquic.identity.keys import IdentityError, load_or_create_identity
    from exoquic.identity.node_id import is_valid_device_name
    from exoquic.identity.trust import TrustStore, TrustStoreError
    from exoquic.orchestration.cluster import ClusterSettings

    methods = tuple(parse_methods(args.discovery))
    name = args.name or platform.node().split(".")[0] or "node"
    if not is_valid_device_name(name):
        raise ValueError(f"--name {name!r}: use 1-64 printable characters")
    try:
        identity = load_or_create_identity()
        trust = TrustStore.open()
    except OSError as exc:
        raise StartupError(f"cannot use the node's home: {exc}") from exc
    except (IdentityError, TrustStoreError) as exc:
        raise StartupError(str(exc)) from exc
    if "manual" in methods:
        check_peers_file(args.peers)
    return ClusterSettings(
        identity=identity,
        trust=trust,
        name=name,
        host=args.node_host,
        port=args.node_port,
        discovery=methods,
        peers_file=args.peers,
        memory_limit=args.memory_limit,
        peer_timeout=args.peer_timeout,
    )


def check_peers_file(path: Path | None) -> None:
    """A peers file given with --peers must exist; any peers file must parse.
    (A running node re-reads it and keeps its last good peers on a bad edit.)"""
    from exoquic.discovery.manual import ManualPeersError, parse_manual_peers
    from exoquic.discovery.service import PEERS_FILENAME

    file = path if path is not None else paths.home() / PEERS_FILENAME
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        if path is None:
            return  # no default peers file: no manual peers
        raise StartupError(f"--peers {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise StartupError(f"cannot read the peers file {file}: {exc}") from exc
    try:
        parse_manual_peers(text, str(file))
    except ManualPeersError as exc:
        raise StartupError(str(exc)) from exc


def add_status_command(commands: argparse._SubParsersAction) -> None:
    status = commands.add_parser("status", help="show the cluster as the local node sees it")
    status.add_argument(
        "--api-host",
        help="the node's API address (default: the node running in this home, else 127.0.0.1)",
    )
    status.add_argument(
        "--api-port", type=int, help="the node's API port (default: as for --api-host, 52415)"
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
    from exoquic.local_api import DEFAULT_API_HOST, DEFAULT_API_PORT, api_url, find_local_api

    if host is None and port is None:
        local = find_local_api()
        if local is not None:
            return local.url
    return api_url(host or DEFAULT_API_HOST, port or DEFAULT_API_PORT)


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
