"""`exoquic up`: start a node and serve the API."""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from exoquic import defaults, paths
from exoquic.cli.options import Subcommands, add_model_options, parse_size
from exoquic.errors import StartupError

if TYPE_CHECKING:
    from exoquic.orchestration.cluster import ClusterSettings


def register(commands: Subcommands) -> None:
    up = commands.add_parser("up", help="start a node and serve the API")
    add_model_options(up)
    up.add_argument(
        "--api-host",
        "--host",
        default=defaults.API_HOST,
        dest="api_host",
        help=f"address the HTTP API listens on (default: {defaults.API_HOST})",
    )
    up.add_argument(
        "--api-port",
        "--port",
        type=int,
        default=defaults.API_PORT,
        dest="api_port",
        help=f"HTTP API port (default: {defaults.API_PORT})",
    )
    up.add_argument(
        "--insecure-api",
        action="store_true",
        help="allow an API beyond loopback without an API key",
    )
    up.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let this web origin call the API from a browser (repeatable)",
    )
    add_admission_options(up)
    add_cluster_options(up)
    up.set_defaults(handler=cmd_up)


def add_admission_options(up: argparse.ArgumentParser) -> None:
    """`--max-requests`, `--queue-timeout`, `--max-queued` (see exoquic.api.admission)."""
    up.add_argument(
        "--max-requests",
        type=int,
        default=defaults.MAX_REQUESTS,
        metavar="N",
        help="generations this node's API runs at once; beyond that HTTP 429 "
        f"(0: no limit; default: {defaults.MAX_REQUESTS})",
    )
    up.add_argument(
        "--queue-timeout",
        type=float,
        default=defaults.QUEUE_TIMEOUT_S,
        metavar="SECONDS",
        help="how long a request beyond --max-requests waits for a slot before its 429 "
        f"(default: {defaults.QUEUE_TIMEOUT_S:g}, refuse at once)",
    )
    up.add_argument(
        "--max-queued",
        type=int,
        default=defaults.MAX_QUEUED,
        metavar="N",
        help="requests that may wait at once with --queue-timeout "
        f"(default: {defaults.MAX_QUEUED})",
    )


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
        default=defaults.NODE_PORT,
        help=f"UDP port of the node protocol (default: {defaults.NODE_PORT})",
    )
    group.add_argument(
        "--peers",
        type=Path,
        metavar="FILE",
        help="JSON file of peers for manual discovery (default: peers.json in EXOQUIC_HOME)",
    )
    group.add_argument(
        "--discovery",
        default=defaults.DISCOVERY,
        metavar="METHODS",
        help=f"comma-separated: multicast, manual, tailscale (default: {defaults.DISCOVERY})",
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
        default=defaults.PEER_TIMEOUT_S,
        metavar="SECONDS",
        help=f"silence after which a peer counts as gone (default: {defaults.PEER_TIMEOUT_S:g})",
    )
    group.add_argument(
        "--prefix-cache",
        type=parse_size,
        default=defaults.PREFIX_CACHE_BYTES,
        metavar="SIZE",
        help="memory for the KV caches of finished prompts, reused by later requests that "
        "start the same way, e.g. a chat's next turn (0: off; default: "
        f"{defaults.PREFIX_CACHE_BYTES >> 20}M)",
    )


def cmd_up(args: argparse.Namespace) -> int:
    import trio

    from exoquic.api.limits import AdmissionLimits
    from exoquic.api.security import InsecureBindError, TokenFileError, security_for_bind
    from exoquic.engines.registry import engine_threads_setting
    from exoquic.orchestration.node import NodeSettings
    from exoquic.serve import serve_node

    try:
        security = security_for_bind(
            args.api_host, insecure=args.insecure_api, origins=args.cors_origin
        )
    except (InsecureBindError, TokenFileError) as exc:
        print(f"exoquic: {exc}", file=sys.stderr)
        return 2
    try:
        cluster = cluster_settings(args)
        limits = AdmissionLimits(args.max_requests, args.max_queued, args.queue_timeout)
        engine_threads_setting()  # a bad EXOQUIC_ENGINE_THREADS stops here, not in the engine
    except ValueError as exc:
        print(f"exoquic: {exc}", file=sys.stderr)
        return 2
    settings = NodeSettings(
        model=args.model, engine=args.engine, max_context=args.max_context, weights=args.weights
    )
    trio.run(serve_node, settings, args.api_host, args.api_port, security, cluster, limits)
    return 0


def cluster_settings(args: argparse.Namespace) -> ClusterSettings:
    """ClusterSettings from `exoquic up`'s options, with this node's identity
    and trust store from EXOQUIC_HOME. Raises ValueError with a message for people."""
    from exoquic.discovery.service import parse_methods
    from exoquic.identity.keys import IdentityError, load_or_create_identity
    from exoquic.identity.node_id import is_valid_device_name
    from exoquic.identity.trust import TrustStore, TrustStoreError
    from exoquic.orchestration.cluster import ClusterSettings
    from exoquic.orchestration.ring import RingSettings

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
        ring_settings=RingSettings(prefix_cache_bytes=args.prefix_cache),
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
