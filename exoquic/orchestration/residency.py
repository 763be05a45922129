"""Which models stay loaded, and for how long (pure: time is an argument).

A node holds its default model (`exoquic up --model`, pinned: never unloaded)
and any cached model a request named, each for a *keep-alive* after its last
request, as Ollama does. `Residency` is the record of what is loaded: sizes,
last use, requests running and requests about to run. It answers three
questions, with `now` given by the caller (trio's clock, or a fake one in
tests):

- which idle models are past their keep-alive (`expired`), leaving those a
  ring peer still wants (a model loaded on demand in a ring stays while any
  of its nodes wants it, see docs/ring.md);
- when the next one will be (`next_deadline`), so the unloader sleeps until then;
- which idle models to unload, least recently used first, to make room for a
  model of a given size (`evictions`).

A request *reserves* its model when it is resolved (before its prompt is
tokenized) and *starts* when its generation begins; a reservation that never
starts (the request was refused after all) lapses after `RESERVATION_S`. A
model is idle when it has no running and no live reserved request.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum

DEFAULT_KEEP_ALIVE_S = 300.0
"""How long a model stays loaded after its last request (Ollama's default)."""
RESERVATION_S = 30.0
"""How long a resolved request keeps its model from being unloaded before its
generation starts (tokenizing and admission take far less)."""

KeepAlive = float | None
"""Seconds to stay loaded after the last request; None: forever."""


class Keep(Enum):
    """`Residency.reserve` without a keep-alive of its own: the model keeps its own."""

    CURRENT = "current"


KEEP = Keep.CURRENT

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: object) -> KeepAlive:
    """Ollama's `keep_alive`: seconds as a number, or a Go duration string
    ("5m", "1h30m", "10s", "-1"); 0 unloads right after the request, a negative
    value keeps the model forever (None). Raises ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError('keep_alive must be a duration ("5m") or a number of seconds')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_duration(value.strip())
    else:
        raise ValueError('keep_alive must be a duration ("5m") or a number of seconds')
    if math.isnan(seconds) or seconds == math.inf:
        raise ValueError(f"keep_alive {value!r} is not a duration")
    return None if seconds < 0 else seconds


def _parse_duration(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    try:
        return sign * float(body)  # "300", "-1": plain seconds
    except ValueError:
        pass
    total, pos = 0.0, 0
    for match in _DURATION.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(body):
        raise ValueError(f"keep_alive {text!r} is not a duration (e.g. 5m, 1h30m, 10s, -1)")
    return sign * total


def describe_keep_alive(keep_alive: KeepAlive) -> str:
    return "forever" if keep_alive is None else f"{keep_alive:g} s"


@dataclass
class Resident:
    """One loaded model."""

    model_id: str
    size: int  # bytes it takes (weights and its KV cache at full context)
    keep_alive: KeepAlive
    last_used: float  # when its last request ended (or it was reserved or loaded)
    pinned: bool = False  # the default model: never unloaded
    # A ring peer wants it (docs/ring.md): it stays, and its own keep-alive only
    # decides whether this node still wants it itself.
    peer_wanted: bool = False
    running: int = 0
    reservations: list[float] = field(default_factory=list)  # their deadlines

    def busy(self, now: float) -> bool:
        return self.running > 0 or any(deadline > now for deadline in self.reservations)

    def wanted(self, now: float) -> bool:
        """Whether this node wants it loaded itself (its peers aside)."""
        expiry = self.expiry(now)
        return self.busy(now) or expiry is None or expiry > now

    def expiry(self, now: float) -> float | None:
        """When this node's own keep-alive runs out if no request comes; None:
        never. A busy model's keep-alive counts from now at the earliest."""
        if self.pinned or self.keep_alive is None:
            return None
        since = max(self.last_used, now) if self.busy(now) else self.last_used
        return since + self.keep_alive


class Residency:
    """The loaded models (see the module docstring). Every method takes `now`
    where time matters; nothing here sleeps or does I/O."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity  # bytes this node may give to loaded models
        self._residents: dict[str, Resident] = {}

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._residents

    def get(self, model_id: str) -> Resident | None:
        return self._residents.get(model_id)

    def residents(self) -> list[Resident]:
        """Every loaded model, pinned first, then most recently used first."""
        return sorted(self._residents.values(), key=lambda r: (not r.pinned, -r.last_used))

    @property
    def used(self) -> int:
        return sum(r.size for r in self._residents.values())

    def add(
        self,
        model_id: str,
        size: int,
        now: float,
        keep_alive: KeepAlive = DEFAULT_KEEP_ALIVE_S,
        *,
        pinned: bool = False,
        reservations: int = 0,
    ) -> Resident:
        """Record a model just loaded, with `reservations` requests waiting for it."""
        resident = Resident(model_id, size, keep_alive, now, pinned)
        resident.reservations = [now + RESERVATION_S] * reservations
        self._residents[model_id] = resident
        return resident

    def remove(self, model_id: str) -> None:
        self._residents.pop(model_id, None)

    def resize(self, model_id: str, size: int) -> None:
        self._residents[model_id].size = size

    def reserve(self, model_id: str, now: float, keep_alive: KeepAlive | Keep = KEEP) -> None:
        """A request resolved to the model; `keep_alive`, unless KEEP, replaces its
        keep-alive (as in Ollama, a request's keep_alive stays with the model)."""
        resident = self._residents[model_id]
        resident.reservations = [d for d in resident.reservations if d > now]
        resident.reservations.append(now + RESERVATION_S)
        resident.last_used = max(resident.last_used, now)
        if not isinstance(keep_alive, Keep):
            resident.keep_alive = keep_alive

    def started(self, model_id: str, now: float) -> None:
        """A request's generation began: it takes the place of its reservation."""
        resident = self._residents.get(model_id)
        if resident is None:
            return
        live = sorted(d for d in resident.reservations if d > now)
        resident.reservations = live[1:]
        resident.running += 1

    def finished(self, model_id: str, now: float) -> None:
        """A request's generation ended, however it ended: the keep-alive counts from now."""
        resident = self._residents.get(model_id)
        if resident is None:
            return
        resident.running = max(0, resident.running - 1)
        resident.last_used = max(resident.last_used, now)

    def unreserve(self, model_id: str, now: float) -> None:
        """A request that reserved the model will not generate (e.g. a load-only call)."""
        resident = self._residents.get(model_id)
        if resident is None:
            return
        live = sorted(d for d in resident.reservations if d > now)
        resident.reservations = live[1:]
        resident.last_used = max(resident.last_used, now)

    def set_peer_wanted(self, model_id: str, wanted: bool) -> None:
        resident = self._residents.get(model_id)
        if resident is not None:
            resident.peer_wanted = wanted

    def expired(self, now: float) -> list[str]:
        """The models nobody wants any more, to unload now: idle, past their
        keep-alive, and not wanted by a ring peer."""
        return [
            r.model_id for r in self._residents.values() if not r.peer_wanted and not r.wanted(now)
        ]

    def next_deadline(self, now: float) -> float | None:
        """The next time `expired` may change without another call here: a keep-alive
        running out, or a reservation lapsing. None: nothing to wait for."""
        times: list[float] = []
        for r in self._residents.values():
            times += [d for d in r.reservations if d > now]
            expiry = r.expiry(now)
            if expiry is not None and expiry > now and not r.busy(now):
                times.append(expiry)
        return min(times, default=None)

    def evictions(self, needed: int, now: float) -> list[str] | None:
        """The idle models to unload, least recently used first, so that `needed`
        more bytes fit: [] when they fit already, None when unloading every idle
        model would still not make room (busy and pinned models stay)."""
        free = self.capacity - self.used
        if needed <= free:
            return []
        idle = [
            r
            for r in self._residents.values()
            if not r.pinned and not r.busy(now) and not r.peer_wanted  # (in use by the ring)
        ]
        chosen: list[str] = []
        for resident in sorted(idle, key=lambda r: r.last_used):
            chosen.append(resident.model_id)
            free += resident.size
            if needed <= free:
                return chosen
        return None
