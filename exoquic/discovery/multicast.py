"""Signed UDP multicast discovery on the local network (IPv4; trio driver).

Every node sends its announcement (see `announcement`) to 239.255.77.77:52416
with TTL 1 on every interface that is up, has an IPv4 address and does
multicast (re-enumerated every `rescan_interval`): quickly at start and after
an interface appears, then every `interval`. It also answers a newly found
peer at once, so two nodes usually find each other within one round trip of
the second one starting. Received datagrams go through `PeerTable`; its
events come out on a channel.

Several nodes can run on one host (SO_REUSEADDR/SO_REUSEPORT, multicast
loopback on). Only IPv4 for now.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psutil
import trio

from exoquic import defaults
from exoquic.discovery.announcement import MAX_ANNOUNCEMENT_SIZE, encode_announcement
from exoquic.discovery.peer_table import PeerTable, RateLimits, TrustChecker
from exoquic.discovery.peers import PeerEvent, PeerEventKind
from exoquic.identity.keys import Identity

log = logging.getLogger(__name__)

MULTICAST_GROUP = "239.255.77.77"  # IPv4 organization-local scope (RFC 2365)
MULTICAST_PORT = defaults.MULTICAST_PORT
_RECEIVE_BUFFER = 2 * MAX_ANNOUNCEMENT_SIZE  # so that oversize datagrams show as such
_last_start_time = 0


def new_start_time() -> int:
    """The `start` of a new instance: microseconds since the Unix epoch, and later
    than any earlier instance of this process even if the clock stood still."""
    global _last_start_time
    _last_start_time = max(time.time_ns() // 1000, _last_start_time + 1)
    return _last_start_time


@dataclass(frozen=True)
class MulticastSettings:
    """Timing and placement of multicast discovery.

    A peer expires after `missed_intervals` steady intervals without a valid
    announcement. `interfaces` names the interfaces to use; None means every
    suitable one (and loopback only when there is no other, so several nodes
    on an offline machine still meet).
    """

    group: str = MULTICAST_GROUP
    port: int = MULTICAST_PORT
    interval: float = 2.0
    fast_interval: float = 0.5
    fast_count: int = 5
    missed_intervals: int = 3
    rescan_interval: float = 10.0
    interfaces: tuple[str, ...] | None = None
    limits: RateLimits = field(default_factory=RateLimits)

    @property
    def expire_after(self) -> float:
        return self.interval * self.missed_intervals


def multicast_interfaces(names: Sequence[str] | None = None) -> dict[str, str]:
    """Interface name -> one IPv4 address, for the interfaces to announce on."""
    stats = psutil.net_if_stats()
    addresses = {
        name: next((a.address for a in addrs if a.family == socket.AF_INET), None)
        for name, addrs in psutil.net_if_addrs().items()
    }
    usable = {name: addr for name, addr in addresses.items() if addr is not None}
    if names is not None:
        return {name: usable[name] for name in names if name in usable}

    def suitable(name: str) -> bool:
        stat = stats.get(name)
        return stat is not None and stat.isup and "multicast" in stat.flags.split(",")

    chosen = {name: addr for name, addr in usable.items() if suitable(name)}
    if chosen:
        return chosen
    return {name: addr for name, addr in usable.items() if addr.startswith("127.")}


class MulticastDiscovery:
    """Announce this node and report trusted peers heard on the multicast group.

    `capabilities` (a `DeviceCapabilities.to_dict()`) and `pairing` may be
    changed while running; the next announcement or datagram uses them.
    `addresses` are announced as they are; None announces the addresses of
    the interfaces in use.
    """

    def __init__(
        self,
        identity: Identity,
        trust: TrustChecker,
        *,
        port: int,
        name: str,
        capabilities: Mapping[str, Any],
        addresses: Sequence[str] | None = None,
        settings: MulticastSettings | None = None,
        pairing: bool = False,
    ) -> None:
        self.identity = identity
        self.port = port
        self.name = name
        self.capabilities = capabilities
        self.addresses = tuple(addresses) if addresses is not None else None
        self.settings = settings or MulticastSettings()
        self.table = PeerTable(
            trust,
            own_public_key=identity.public_key,
            expire_after=self.settings.expire_after,
            limits=self.settings.limits,
            pairing=pairing,
        )
        self.instance_id = os.urandom(16)
        self.start_time = new_start_time()
        self._sequence = 0
        self._interfaces: dict[str, str] = {}
        self._scanned = False
        self._fast_left = self.settings.fast_count
        self._announce_now = trio.Event()

    @property
    def pairing(self) -> bool:
        return self.table.pairing

    @pairing.setter
    def pairing(self, value: bool) -> None:
        self.table.pairing = value

    async def run(
        self,
        events: trio.MemorySendChannel[PeerEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until cancelled, sending peer events to `events`.

        Reports started once the socket is bound; raises OSError if the
        group's port cannot be bound.
        """
        with _open_socket(self.settings.group, self.settings.port) as sock:
            self._rescan(sock)
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._announce_loop, sock)
                nursery.start_soon(self._receive_loop, sock, events)
                nursery.start_soon(self._expire_loop, events)
                nursery.start_soon(self._rescan_loop, sock)

    def _rescan(self, sock: trio.socket.SocketType) -> None:
        """Join the group on new interfaces and leave the ones that are gone."""
        current = multicast_interfaces(self.settings.interfaces)
        group = self.settings.group
        for name, address in self._interfaces.items():
            if current.get(name) != address:
                _membership(sock, socket.IP_DROP_MEMBERSHIP, group, address, name)
        new = {n: a for n, a in current.items() if self._interfaces.get(n) != a}
        for name, address in new.items():
            _membership(sock, socket.IP_ADD_MEMBERSHIP, group, address, name)
        if new:
            log.info("multicast discovery on %s", ", ".join(f"{n} ({a})" for n, a in new.items()))
            self._fast_left = self.settings.fast_count  # a new link: be found quickly
        if not current and (self._interfaces or not self._scanned):
            log.warning("multicast discovery: no interface with an IPv4 address is up")
        self._interfaces = current
        self._scanned = True

    async def _rescan_loop(self, sock: trio.socket.SocketType) -> None:
        while True:
            await trio.sleep(self.settings.rescan_interval)
            self._rescan(sock)

    async def _announce_loop(self, sock: trio.socket.SocketType) -> None:
        settings = self.settings
        while True:
            await self._announce(sock)
            last = trio.current_time()
            fast = self._fast_left > 0
            self._fast_left -= 1
            with trio.move_on_after(settings.fast_interval if fast else settings.interval):
                await self._announce_now.wait()
            self._announce_now = trio.Event()
            # An early wake (a new peer) still keeps to the fast pace.
            await trio.sleep_until(last + settings.fast_interval)

    async def _announce(self, sock: trio.socket.SocketType) -> None:
        self._sequence += 1
        data = encode_announcement(
            self.identity,
            name=self.name,
            port=self.port,
            addresses=self._announced_addresses(),
            capabilities=self.capabilities,
            start_time=self.start_time,
            instance_id=self.instance_id,
            sequence=self._sequence,
        )
        for name, address in list(self._interfaces.items()):
            try:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _inet(address))
                await sock.sendto(data, (self.settings.group, self.settings.port))
            except OSError as exc:
                # An interface going down between rescans is normal.
                log.debug("multicast send on %s (%s) failed: %s", name, address, exc)

    def _announced_addresses(self) -> tuple[str, ...]:
        if self.addresses is not None:
            return self.addresses
        found = list(dict.fromkeys(self._interfaces.values()))
        remote = [a for a in found if not a.startswith("127.")]
        return tuple(remote or found)

    async def _receive_loop(
        self, sock: trio.socket.SocketType, events: trio.MemorySendChannel[PeerEvent]
    ) -> None:
        while True:
            data, source = await sock.recvfrom(_RECEIVE_BUFFER)
            found = self.table.receive(data, source[0], trio.current_time())
            if any(event.kind is PeerEventKind.APPEARED for event in found):
                self._announce_now.set()  # let the newcomer find us without waiting
            for event in found:
                await events.send(event)

    async def _expire_loop(self, events: trio.MemorySendChannel[PeerEvent]) -> None:
        while True:
            deadline = self.table.next_expiry()
            # Whatever arrives while we sleep expires after we wake.
            if deadline is None:
                deadline = trio.current_time() + self.table.expire_after
            await trio.sleep_until(deadline)
            for event in self.table.expire(trio.current_time()):
                await events.send(event)


def _open_socket(group: str, port: int) -> trio.socket.SocketType:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):  # several nodes on one host
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
        # Bound to the group address, the socket gets no unicast datagrams.
        sock.bind((group, port))
    except OSError:
        sock.close()
        raise
    return trio.socket.from_stdlib_socket(sock)


def _membership(
    sock: trio.socket.SocketType, option: int, group: str, address: str, name: str
) -> None:
    try:
        sock.setsockopt(socket.IPPROTO_IP, option, _inet(group) + _inet(address))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:  # already a member
            return
        verb = "join" if option == socket.IP_ADD_MEMBERSHIP else "leave"
        log.warning("cannot %s multicast group on %s (%s): %s", verb, name, address, exc)


def _inet(address: str) -> bytes:
    return socket.inet_aton(address)
