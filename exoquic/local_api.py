"""Where this device's running node serves its API, for local clients.

`exoquic up` writes `api.json` in the home once its API listens and removes it
when it stops, so `exoquic status` finds the node without `--api-port`. The
file holds no secret: the API key stays in `api_token` (or EXOQUIC_API_KEY).
A file left by a node that was killed names a process that no longer runs,
and is ignored.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

from exoquic import paths
from exoquic.identity.files import write_private_file

log = logging.getLogger(__name__)

API_FILE = "api.json"


@dataclass(frozen=True)
class LocalApi:
    """url: an address of the API this machine can connect to (loopback when the
    node listens on every address); key_required: whether calls need the API key."""

    url: str
    pid: int
    key_required: bool


def api_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def connect_host(bind_host: str) -> str:
    """The address a local client dials for an API bound to `bind_host`."""
    try:
        address = ipaddress.ip_address(bind_host.strip("[]"))
    except ValueError:
        return bind_host  # a name, e.g. localhost
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return str(address)


def api_file(home: Path | None = None) -> Path:
    return (home or paths.home()) / API_FILE


@contextmanager
def advertised(host: str, port: int, key_required: bool) -> Iterator[LocalApi]:
    """Write `api.json` for the API listening on `host:port`; remove it on exit
    (unless another node of the same home has replaced it since)."""
    api = LocalApi(api_url(connect_host(host), port), os.getpid(), key_required)
    path = api_file()
    data = {"url": api.url, "pid": api.pid, "key_required": api.key_required}
    try:
        write_private_file(path, json.dumps(data).encode() + b"\n", replace=True)
    except OSError as exc:  # the node serves anyway; only `status` needs flags then
        log.warning("cannot write %s (%s): `exoquic status` will need --api-port", path, exc)
        yield api
        return
    try:
        yield api
    finally:
        if find_local_api(path) == api:
            path.unlink(missing_ok=True)


def find_local_api(path: Path | None = None) -> LocalApi | None:
    """The API of the node running in this home, or None (no node, or a stale file)."""
    try:
        data = json.loads((path or api_file()).read_text(encoding="utf-8"))
        api = LocalApi(str(data["url"]), int(data["pid"]), bool(data["key_required"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return api if psutil.pid_exists(api.pid) else None


def browser_urls(host: str, port: int) -> list[str]:
    """URLs a browser can open for an API bound to `host`: for 0.0.0.0 or ::,
    loopback and then each of this machine's addresses of that family."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return [api_url(host, port) + "/"]
    if not address.is_unspecified:
        return [api_url(str(address), port) + "/"]
    hosts = [connect_host(host)]
    for found in _interface_addresses(address.version):
        if found not in hosts:
            hosts.append(found)
    return [api_url(h, port) + "/" for h in hosts]


def _interface_addresses(version: int) -> list[str]:
    """This machine's addresses of IP `version`, without link-local ones (a browser
    needs a zone for those), loopback excluded."""
    import psutil

    found = []
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            try:
                ip = ipaddress.ip_address(addr.address.split("%")[0])
            except ValueError:
                continue  # a MAC address
            if ip.version == version and not (ip.is_loopback or ip.is_link_local):
                found.append(str(ip))
    return found
