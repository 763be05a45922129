"""Tailscale discovery: the tailnet's online devices, probed on the exoquic port.

`tailscale status --json` lists the devices of the tailnet (`Peer`, keyed by
their Tailscale node key, with `HostName`, `TailscaleIPs` and `Online`). A
device is an exoquic peer when something at its Tailscale address answers an
exoquic handshake on `port` with a key the trust store holds. The handshake is
the caller's `probe` (a QUIC connection attempt in the transport), so this
module never trusts an address by itself.

A missing, stopped or failing `tailscale` gives a warning (once per problem),
not a crash; discovery keeps polling and recovers when tailscale does.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from exoquic.discovery.peer_table import TrustChecker
from exoquic.discovery.peers import PeerEvent, PeerInfo, diff_peers
from exoquic.identity.node_id import node_id_from_public_key

log = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 15.0
DEFAULT_STATUS_TIMEOUT = 5.0
DEFAULT_PROBE_TIMEOUT = 3.0

Probe = Callable[[str, int], Awaitable[bytes | None]]
"""`probe(host, port)`: the raw ed25519 key of the exoquic node answering a
handshake at host:port, or None when none answers."""


class TailscaleError(Exception):
    """`tailscale status` could not be used; the message says why, for the user."""


@dataclass(frozen=True)
class TailscaleDevice:
    host_name: str
    addresses: tuple[str, ...]
    online: bool


@dataclass(frozen=True)
class TailscaleStatus:
    backend_state: str
    self_device: TailscaleDevice | None
    peers: tuple[TailscaleDevice, ...]


def parse_tailscale_status(text: str) -> TailscaleStatus:
    """The parts of `tailscale status --json` discovery uses; TailscaleError if unusable."""
    try:
        status = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TailscaleError(f"tailscale status is not JSON: {exc}") from None
    except RecursionError:  # the JSON parser recurses once per nesting level
        raise TailscaleError("tailscale status is not JSON: nested too deeply") from None
    if not isinstance(status, dict):
        raise TailscaleError("tailscale status is not a JSON object")
    peers = status.get("Peer") or {}  # null when the tailnet has no other device
    if not isinstance(peers, dict):
        raise TailscaleError("tailscale status: 'Peer' is not an object")
    self_entry = status.get("Self")
    return TailscaleStatus(
        backend_state=str(status.get("BackendState", "")),
        self_device=_device(self_entry) if isinstance(self_entry, dict) else None,
        peers=tuple(_device(entry) for entry in peers.values() if isinstance(entry, dict)),
    )


def _device(entry: dict[str, Any]) -> TailscaleDevice:
    """A field of the wrong type is skipped, not fatal: the device just lacks it."""
    listed = entry.get("TailscaleIPs")
    addresses = []
    for address in listed if isinstance(listed, list) else []:
        try:
            addresses.append(str(ipaddress.ip_address(address)))
        except (ValueError, TypeError):
            continue
    # IPv4 first: it is what a probe tries first.
    addresses.sort(key=lambda a: ipaddress.ip_address(a).version)
    host_name = entry.get("HostName")
    return TailscaleDevice(
        host_name=host_name if isinstance(host_name, str) else "",
        addresses=tuple(addresses),
        online=entry.get("Online") is True,
    )


async def read_tailscale_status(
    binary: str = "tailscale", timeout: float = DEFAULT_STATUS_TIMEOUT
) -> TailscaleStatus:
    """Run `binary status --json` (killed after `timeout` s) and parse its output."""
    command = [binary, "status", "--json"]
    try:
        with trio.fail_after(timeout):
            result = await trio.run_process(
                command, capture_stdout=True, capture_stderr=True, check=False
            )
    except FileNotFoundError:
        raise TailscaleError(f"{binary!r} is not installed (not found on PATH)") from None
    except OSError as exc:  # not executable, not a program, ...
        raise TailscaleError(f"cannot run {binary!r}: {exc}") from None
    except trio.TooSlowError:
        raise TailscaleError(f"`{' '.join(command)}` did not answer within {timeout} s") from None
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip().splitlines()
        detail = stderr[0] if stderr else f"exit status {result.returncode}"
        raise TailscaleError(f"`{' '.join(command)}` failed: {detail}")
    status = parse_tailscale_status(result.stdout.decode(errors="replace"))
    if status.backend_state and status.backend_state != "Running":
        raise TailscaleError(f"tailscale is not connected (state {status.backend_state})")
    return status


class TailscaleDiscovery:
    """Polls tailscale and probes online devices; keeps the trusted ones as peers."""

    def __init__(
        self,
        trust: TrustChecker,
        probe: Probe,
        *,
        port: int,
        binary: str = "tailscale",
        status_timeout: float = DEFAULT_STATUS_TIMEOUT,
        probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
    ) -> None:
        self.trust = trust
        self.probe = probe
        self.port = port
        self.binary = binary
        self.status_timeout = status_timeout
        self.probe_timeout = probe_timeout
        self._peers: dict[str, PeerInfo] = {}
        self._problem: str | None = None

    async def poll(self) -> list[PeerEvent]:
        """One round: read the status, probe online devices, return the changes.

        When tailscale cannot be read the current peers are kept (the next
        successful poll settles them): a hiccup of the CLI is not a network change.
        """
        try:
            status = await read_tailscale_status(self.binary, self.status_timeout)
        except TailscaleError as exc:
            self._report_problem(str(exc))
            return []
        self._report_problem(None)
        found: dict[str, PeerInfo] = {}
        async with trio.open_nursery() as nursery:
            for device in status.peers:
                if device.online and device.addresses:
                    nursery.start_soon(self._probe_device, device, found)
        events = diff_peers(self._peers, found)
        self._peers = found
        return events

    def peers(self) -> dict[str, PeerInfo]:
        return dict(self._peers)

    async def _probe_device(self, device: TailscaleDevice, found: dict[str, PeerInfo]) -> None:
        key = None
        with trio.move_on_after(self.probe_timeout):
            try:
                key = await self.probe(device.addresses[0], self.port)
            except Exception as exc:  # any failure of a probe means "no exoquic node there"
                log.debug("probe of %s failed: %r", device.host_name, exc)
        if key is None:
            return
        if not self.trust.is_trusted(key):
            log.info("tailscale device %s runs exoquic but is not trusted", device.host_name)
            return
        node_id = node_id_from_public_key(key)
        found[node_id] = PeerInfo(
            node_id=node_id,
            addresses=device.addresses,
            port=self.port,
            source="tailscale",
            public_key=key,
            name=device.host_name or None,
        )

    def _report_problem(self, problem: str | None) -> None:
        if problem == self._problem:
            return
        if problem is not None:
            log.warning("tailscale discovery: %s; retrying in the background", problem)
        elif self._problem is not None:
            log.info("tailscale discovery: tailscale is available again")
        self._problem = problem


async def run_tailscale_discovery(
    trust: TrustChecker,
    probe: Probe,
    events: trio.MemorySendChannel[PeerEvent],
    *,
    port: int,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    binary: str = "tailscale",
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Report trusted exoquic nodes on the tailnet, polling every `poll_interval` s."""
    discovery = TailscaleDiscovery(trust, probe, port=port, binary=binary)
    task_status.started()
    while True:
        for event in await discovery.poll():
            await events.send(event)
        await trio.sleep(poll_interval)
