"""Where this device's running node serves its API, for local clients.

`exoquic up` writes `api.json` in the home once its API listens and removes it
when it stops, so `exoquic status` finds the node without `--api-port`. The
file holds no secret: the API key stays in `api_token` (or EXOQUIC_API_KEY).
A file left by a node that was killed names a process that no longer runs,
and is ignored. `get_json` is how `exoquic status` and `exoquic ps` ask it.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from exoquic import defaults, paths
from exoquic.identity.files import write_private_file

log = logging.getLogger(__name__)

API_FILE = "api.json"
TIMEOUT_S = 10


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


class LocalApiError(Exception):
    """A call to the node's API that failed: its text is the one line to print,
    `exit_code` the status the command exits with (2: the key file is unsafe)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def base_url(host: str | None = None, port: int | None = None) -> str:
    """The API to ask: `host` and `port` (the commands' flags), else the node
    running in this home (its api.json), else the default address."""
    if host is None and port is None:
        local = find_local_api()
        if local is not None:
            return local.url
    return api_url(host or defaults.API_HOST, port or defaults.API_PORT)


def get_json(path: str, host: str | None = None, port: int | None = None) -> Any:
    """GET `path` (e.g. `/api/ps`) from the node's API (see `base_url`) with this
    home's API key (EXOQUIC_API_KEY, else `api_token`); its JSON. Raises
    LocalApiError saying what to do when the key file is unsafe, no node
    answers or the node refuses."""
    import httpx

    from exoquic.api.security import API_KEY_ENV, TokenFileError, read_token, token_path

    base = base_url(host, port)
    env_key = os.environ.get(API_KEY_ENV)
    try:
        key = env_key or read_token()
    except TokenFileError as exc:
        raise LocalApiError(str(exc), exit_code=2) from exc
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(f"{base}{path}", headers=headers, timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        raise LocalApiError(unreachable_message(base, exc)) from exc
    if response.status_code != 200:
        key_source = None if not key else API_KEY_ENV if env_key else str(token_path())
        raise LocalApiError(refusal_message(base, response, key_source))
    return response.json()


def print_json(
    path: str, host: str | None, port: int | None, raw: bool, show: Callable[[Any], None]
) -> int:
    """What `exoquic status` and `exoquic ps` do: GET `path` (see `get_json`) and
    print it, as indented JSON when `raw`, else with `show`; the exit status
    (a failure is one line on stderr)."""
    try:
        answer = get_json(path, host, port)
    except LocalApiError as exc:
        print(f"exoquic: {exc}", file=sys.stderr)
        return exc.exit_code
    if raw:
        print(json.dumps(answer, indent=2))
    else:
        show(answer)
    return 0


def unreachable_message(base: str, exc: Exception) -> str:
    import httpx

    if isinstance(exc, httpx.TimeoutException):
        return f"the node at {base} did not answer within {TIMEOUT_S} s"
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
