"""Who may call the API: bearer keys, origin checks and DNS-rebinding defence.

The API binds to loopback by default. Beyond loopback it requires an API key
unless the operator opts out with `--insecure-api`. Browsers get no CORS
grants except for origins the operator lists: the UI is served by the node
itself, so it never needs one. A cross-site page that still tries (a "simple"
POST, or a DNS-rebinding attack that points its own name at 127.0.0.1) is
refused because its Origin or Host header is not one this node answers to.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import platform
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path

from exoquic import paths
from exoquic.identity.files import loose_permissions, write_private_file

API_KEY_ENV = "EXOQUIC_API_KEY"
TOKEN_FILE = "api_token"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]", "::1")


class InsecureBindError(Exception):
    """Listening beyond loopback without an API key and without --insecure-api."""


class TokenFileError(Exception):
    """The API token file cannot be used; the message says how to fix it."""


@dataclass(frozen=True)
class ApiSecurity:
    """The checks every request passes before it reaches a route.

    api_key: required as `Authorization: Bearer <key>` on the API (None: open).
    allowed_origins: web origins granted CORS, exactly as browsers send them.
    allowed_hosts: Host header names accepted; None accepts any name.
    ip_hosts: also accept any IP-literal Host (a DNS-rebinding page always
        arrives under its own domain name, never under an IP literal).
    """

    api_key: str | None = None
    allowed_origins: frozenset[str] = field(default_factory=frozenset)
    allowed_hosts: frozenset[str] | None = None
    ip_hosts: bool = False

    def key_matches(self, authorization: str | None) -> bool:
        if self.api_key is None:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.api_key.encode()
        )

    def host_allowed(self, host_header: str | None) -> bool:
        if self.allowed_hosts is None:
            return True
        name = _host_name(host_header or "").lower()
        return name in self.allowed_hosts or (self.ip_hosts and _is_ip(name))

    def origin_allowed(self, origin: str | None, host_header: str | None) -> bool:
        """Same-origin requests and listed origins pass; other browsers' pages do not."""
        if origin is None:
            return True  # not a browser, or a same-origin GET
        if origin in self.allowed_origins:
            return True
        own = {f"http://{host_header}", f"https://{host_header}"}
        return origin in own and self.host_allowed(host_header)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def local_host_names() -> frozenset[str]:
    """Names this machine answers to without DNS tricks: loopback, its hostname, mDNS."""
    names = {*LOOPBACK_NAMES}
    for name in (platform.node(), socket.getfqdn()):
        if name:
            names |= {name.lower(), name.lower().split(".")[0] + ".local"}
    return frozenset(names)


def security_for_bind(
    host: str, *, insecure: bool, origins: list[str], api_key: str | None = None
) -> ApiSecurity:
    """The policy for an API bound to `host` (see the module docstring)."""
    key = api_key or os.environ.get(API_KEY_ENV) or read_token()
    allowed_origins = frozenset(o.rstrip("/") for o in origins)
    if is_loopback(host):
        return ApiSecurity(key, allowed_origins, frozenset(LOOPBACK_NAMES))
    if key is not None:
        # Beyond loopback with a key: the key is the guard, whatever name the caller used.
        return ApiSecurity(key, allowed_origins, None)
    if not insecure:
        raise InsecureBindError(
            f"the API would listen on {host}, beyond this machine, without an API key. "
            f"Create one with `exoquic token` (or set {API_KEY_ENV}), or pass --insecure-api "
            "to let anyone on the network use it."
        )
    # Open to the network, but still not to other websites through DNS rebinding.
    return ApiSecurity(None, allowed_origins, local_host_names(), ip_hosts=True)


def token_path() -> Path:
    return paths.home() / TOKEN_FILE


def read_token() -> str | None:
    """The stored API key, or None when there is no token file.

    Raises TokenFileError when other users may read or write the file: a key
    they can read is no secret, and one they can write lets them in. Refusing
    (rather than warning) matches the identity key and the trust store.
    """
    path = token_path()
    try:
        if loose_permissions(path):
            raise TokenFileError(
                f"the API token file {path} is accessible by other users; restrict it with "
                f"`chmod 600 {path}` (or make a new key with `exoquic token`)"
            )
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read the API token file {path}: {exc}") from exc


def create_token() -> str:
    """Make a new API key, store it (mode 0600, atomically) and return it."""
    token = "exq-" + secrets.token_urlsafe(32)
    write_private_file(token_path(), (token + "\n").encode(), replace=True)
    return token


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def _host_name(host_header: str) -> str:
    """`127.0.0.1:52415` -> `127.0.0.1`; `[::1]:80` -> `[::1]`."""
    if host_header.startswith("["):
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header
