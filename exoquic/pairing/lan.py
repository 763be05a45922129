"""Finding the device that shows a pairing code, over signed multicast.

The device showing a code announces its pairing port with the ordinary
discovery announcement (`exoquic.discovery.announcement`), marked with the
capability `{"pairing": 1}` and signed with a **throwaway key** made for this
one run. Discovery does not make anything trusted, so nothing is lost: the
device's real key is learnt from TLS and proven by the pairing itself. What is
gained is that a node already running on that device (`exoquic up`, same
identity) is not disturbed: peers that trust it would otherwise take the
pairing process's announcements (another instance id, another port) for a
restart of the node and its real announcements for replays.

The device where the code is typed listens in pairing mode, where untrusted
announcers come out as `CANDIDATE` events, and keeps the ones with the mark.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import trio

from exoquic.discovery.multicast import MulticastDiscovery, MulticastSettings
from exoquic.discovery.peers import PeerEvent, PeerEventKind, PeerInfo
from exoquic.identity.keys import Identity
from exoquic.pairing.service import PairingFailed

PAIRING_CAPABILITY = "pairing"
"""Capability key of an announcement saying "this address shows a pairing code";
its value is the pairing protocol version (1)."""
ANNOUNCE_INTERVAL = 1.0
"""Seconds between pairing announcements: more often than a node's, for the
short time a code is shown, so the other device finds it within about a second."""
SETTLE = 1.0
"""After the first device is found, how long to listen for a second one."""
_LISTENER_INTERVAL = 3600.0  # the listener must announce something; once is enough
_LISTENER_PORT = 9  # "discard": nobody connects to an unmarked candidate


class _TrustNobody:
    """Announcements are signed with throwaway keys: none of them is a peer."""

    def is_trusted(self, public_key: bytes) -> bool:
        return False


@dataclass(frozen=True)
class PairingDevice:
    """A device showing a pairing code, as announced (nothing here is authenticated)."""

    name: str
    addresses: tuple[str, ...]
    port: int

    @property
    def endpoints(self) -> list[tuple[str, int]]:
        """(host, port) pairs to try, best first."""
        return [(address, self.port) for address in self.addresses]

    def __str__(self) -> str:
        return f"{self.name!r} at {', '.join(self.addresses)} port {self.port}"


async def announce_pairing(
    port: int,
    name: str,
    settings: MulticastSettings | None = None,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Announce until cancelled that `name` shows a pairing code on UDP `port`.

    Start it with `nursery.start`; raises OSError (before reporting started)
    when the multicast port cannot be bound.
    """
    settings = settings or MulticastSettings(interval=ANNOUNCE_INTERVAL)
    announcer = MulticastDiscovery(
        Identity.generate(),
        _TrustNobody(),
        port=port,
        name=name,
        capabilities={PAIRING_CAPABILITY: 1},
        settings=settings,
    )
    send, receive = trio.open_memory_channel[PeerEvent](16)
    async with trio.open_nursery() as nursery:
        await nursery.start(announcer.run, send)
        task_status.started()
        async for _ in receive:  # trusting nobody and not pairing: nothing comes
            pass


async def find_pairing_device(
    *, wait: float, settings: MulticastSettings | None = None, settle: float = SETTLE
) -> PairingDevice:
    """The one device on the LAN announcing a pairing code, heard within `wait` s.

    Listens `settle` s more after the first one, so that two devices showing
    codes at once are noticed instead of a guess burning the wrong code.
    Raises PairingFailed when none or several are found, or multicast is
    unavailable.
    """
    quiet = replace(settings or MulticastSettings(), interval=_LISTENER_INTERVAL, fast_count=0)
    listener = MulticastDiscovery(
        Identity.generate(),
        _TrustNobody(),
        port=_LISTENER_PORT,
        name="exoquic pair",
        capabilities={},
        settings=quiet,
        pairing=True,
    )
    send, receive = trio.open_memory_channel[PeerEvent](64)
    found: dict[str, PairingDevice] = {}
    async with trio.open_nursery() as nursery:
        try:
            await nursery.start(listener.run, send)
        except OSError as exc:
            # `start` hands the error back unwrapped; raised out of the nursery
            # body it would come out wrapped in an exception group.
            problem: OSError | None = exc
        else:
            problem = None
            with trio.move_on_after(wait):
                await _collect(receive, found, until=1)
            if found:
                with trio.move_on_after(settle):
                    await _collect(receive, found, until=None)
        nursery.cancel_scope.cancel()
    if problem is not None:
        raise PairingFailed(
            f"cannot listen for devices on the LAN ({problem.strerror or problem}); "
            "give the other device's address with --addr HOST:PORT"
        )
    return _only(found, wait)


async def _collect(
    events: trio.MemoryReceiveChannel[PeerEvent], found: dict[str, PairingDevice], until: int | None
) -> None:
    async for event in events:
        device = _pairing_device(event)
        if device is not None:
            found[event.peer.node_id] = device
            if until is not None and len(found) >= until:
                return


def _pairing_device(event: PeerEvent) -> PairingDevice | None:
    peer: PeerInfo = event.peer
    if event.kind is not PeerEventKind.CANDIDATE or peer.capabilities.get(PAIRING_CAPABILITY) != 1:
        return None
    return PairingDevice(peer.name or "?", peer.addresses, peer.port)


def _only(found: dict[str, PairingDevice], wait: float) -> PairingDevice:
    if not found:
        raise PairingFailed(
            f"no device showing a pairing code was found on the LAN within {wait:g} s. "
            "Is `exoquic pair` running on the other device, on the same network? "
            "Multicast may be blocked there: use --addr HOST:PORT (the port it printed)."
        )
    if len(found) > 1:
        listed = "; ".join(str(device) for device in found.values())
        raise PairingFailed(
            f"several devices are showing pairing codes ({listed}): "
            "pick yours with --addr HOST:PORT"
        )
    return next(iter(found.values()))
