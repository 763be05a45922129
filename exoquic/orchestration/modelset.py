"""The models a node serves: its default model and any cached model on demand.

`ModelSet` is the one owner of the set of loaded models. The default model
(`exoquic up --model`) is the node `open_node` made: in a ring, served by
the ring's plan as before, and pinned (never unloaded). Any other model a
request names is resolved in the `Catalog` (bundled or cached; with
`auto_pull`, pulled first), checked against this node's memory (the fit
message of `topology/fit.py` when it can never fit; least recently used idle
models unloaded when it fits only without them), loaded whole on this node by
`open_node` in a task of the set's own nursery, and unloaded once idle past
its keep-alive (`Residency`, the pure part, decides what and when).

On a node that is part of a network (`exoquic up`), each model loaded on
demand runs in a ring of its own over the node's `Network`, with its own
engine worker: the peers that have the model cached join it (a peer's ring
dialling this node makes the set load the model here too, as a *follower*),
the memory each node offers it is what its other models leave, and the
model stays while any node of its ring wants it (`Demand`, docs/ring.md). A
node alone (`exoquic run`, tests) loads each model whole by itself.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import trio

from exoquic.errors import sole_error
from exoquic.models.errors import ModelError
from exoquic.models.hf_loader import as_hf_weights
from exoquic.orchestration.catalog import Catalog, CatalogEntry, gguf_model_id
from exoquic.orchestration.generation import UnavailableError
from exoquic.orchestration.node import Node, NodeSettings, OnDemandRing, open_node
from exoquic.orchestration.residency import (
    DEFAULT_KEEP_ALIVE_S,
    KEEP,
    Keep,
    KeepAlive,
    Residency,
    Resident,
)
from exoquic.topology import DEFAULT_MEMORY_FRACTION, DeviceCapabilities
from exoquic.topology.fit import KV_BYTES_PER_VALUE, FitCheck, check_fit

if TYPE_CHECKING:
    from exoquic.download.ensure import NodeModel
    from exoquic.download.pull import PullTarget

log = logging.getLogger(__name__)


JOIN_WAIT_S = 4.0
"""How long a peer's dial waits for this node to join a ring of the model it
names (under the dialer's hello timeout); past it the dialer simply redials."""


class ModelNotFoundError(Exception):
    """A request named a model that is neither served nor cached (the API's 404)."""

    code = "model_not_found"


@dataclass(frozen=True)
class ModelSetSettings:
    """`exoquic up`'s `--keep-alive` and `--auto-pull`, and how long a request
    waits for a load (the plan timeout's 60 s, as a request waits for a plan)."""

    keep_alive: KeepAlive = DEFAULT_KEEP_ALIVE_S
    auto_pull: bool = False
    load_timeout: float = 60.0
    memory_fraction: float = DEFAULT_MEMORY_FRACTION


@dataclass
class _Load:
    """A model being pulled and loaded; requests for it wait on `done`."""

    name: str
    entry: CatalogEntry | None  # None until pulled (with auto_pull), or for a ranged join
    keep_alive: KeepAlive | Keep
    waiting: int = 0
    done: trio.Event = field(default_factory=trio.Event)
    error: Exception | None = None
    follower: bool = False  # loaded because a ring peer asked, not for a request here
    model_id: str | None = None  # once known (a name may be an alias, or a tag to resolve)


@dataclass
class _Held:
    entry: CatalogEntry | None  # None: joined a ring with only this node's byte ranges
    node: Node
    stop: trio.Event
    stopped: trio.Event
    loaded_at: float  # wall clock
    load_seconds: float
    # Joined a ring for its peers; it keeps no keep-alive of its own until a
    # request here uses it, and a grace reservation until a peer says what it wants.
    follower: bool = False
    grace: bool = False  # a follower's grace reservation is still held


@dataclass(frozen=True)
class Servable:
    """A model `/v1/models` lists: loaded, or cached and loadable on demand."""

    model_id: str
    loaded: bool
    size_bytes: int | None  # its weights; None when unknown
    needed_bytes: int | None  # weights plus the KV cache at full context
    fits: bool | None  # whether this node could hold it with nothing else loaded
    default: bool = False
    format: str | None = None  # "gguf" or "safetensors" (Ollama's details.format)


class ModelSet:
    """The loaded models and the loading of others (see the module docstring)."""

    def __init__(
        self,
        default: Node,
        catalog: Catalog | None = None,
        *,
        node_settings: NodeSettings | None = None,
        usable_memory: int | None = None,
        settings: ModelSetSettings | None = None,
    ) -> None:
        self.default = default
        self.catalog = catalog
        self.settings = settings or ModelSetSettings()
        self.node_settings = node_settings or NodeSettings(default.model_id)
        self.usable_memory = (
            usable_memory or default.cluster.plans.state.me.capabilities.usable_memory
        )
        capacity = int(self.usable_memory * self.settings.memory_fraction)
        self.residency = Residency(capacity)
        # Pinned: its keep-alive and last use never matter (and no clock is needed here).
        self.residency.add(default.model_id, _local_size(default), 0.0, None, pinned=True)
        default.usage = _Usage(self, default.model_id)
        self.network = default.cluster.network  # None: alone, models load whole here
        if self.network is not None:
            self.network.join = self._join_for_peers
        self._held: dict[str, _Held] = {}
        self._aliases: dict[str, str] = {}  # request names resolved to a model id by a pull
        self._loads: dict[str, _Load] = {}
        self._lock = trio.Lock()  # one load or unload decision at a time
        self._pull_lock = trio.Lock()
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None

    # --- requests ------------------------------------------------------------

    def loaded_node(self, name: str) -> Node | None:
        """The loaded node `name` names, without loading anything."""
        from exoquic.models.registry import canonical_model_id

        if self.default.serves(name):
            return self.default
        model_id = canonical_model_id(name.removesuffix(":latest"))
        held = self._held.get(self._aliases.get(model_id, model_id))
        return held.node if held is not None else None

    async def acquire(self, name: str, keep_alive: KeepAlive | Keep = KEEP) -> Node:
        """The node serving `name`, loading the model if needed, reserved for one
        request (see `Residency.reserve`). Raises ModelNotFoundError (not cached,
        no auto-pull) or UnavailableError (cannot fit, load failed or too slow)."""
        node = self.loaded_node(name)
        if node is None and self.catalog is not None:
            entry = self.catalog.find(name)
            if entry is not None and entry.model_id in self.residency:
                node = self.node_of(entry.model_id)  # another name of a loaded model
            elif entry is not None or self.settings.auto_pull:
                return await self._wait_for_load(name, entry, keep_alive)
        if node is None:
            raise ModelNotFoundError(self.not_found_message(name))
        held = self._held.get(node.model_id)
        if held is not None and held.follower:  # a request here: now this node wants it too
            held.follower = False
            if isinstance(keep_alive, Keep):
                keep_alive = self.settings.keep_alive
        self.residency.reserve(node.model_id, trio.current_time(), keep_alive)
        self._pulse()
        return node

    def unreserve(self, node: Node) -> None:
        """A request that acquired `node` will not generate (a load-only call)."""
        self.residency.unreserve(node.model_id, trio.current_time())
        self._pulse()

    def not_found_message(self, name: str) -> str:
        served = ", ".join(f"'{r.model_id}'" for r in self.residency.residents())
        if self.catalog is None:
            return (
                f"the model '{name}' does not exist or is not loaded; this node serves "
                f"{served} (see GET /v1/models)"
            )
        return (
            f"the model '{name}' is not cached on this node: download it with "
            f"`exoquic pull {name}` (or start the node with --auto-pull); it serves "
            f"{served} and the cached models of GET /v1/models"
        )

    async def _wait_for_load(
        self, name: str, entry: CatalogEntry | None, keep_alive: KeepAlive | Keep
    ) -> Node:
        key = entry.model_id if entry is not None else name
        load = self._loads.get(key)
        if load is None:
            if self._nursery is None:
                raise UnavailableError("this node does not load models on demand")
            load = self._loads[key] = _Load(name, entry, keep_alive)
            self._nursery.start_soon(self._load, key, load)
        load.waiting += 1
        try:
            with trio.move_on_after(self.settings.load_timeout):
                await load.done.wait()
        finally:
            if not load.done.is_set():  # timed out, or the client went away
                load.waiting -= 1
        if not load.done.is_set():
            raise UnavailableError(
                f"{key} is still loading after {self.settings.load_timeout:.0f} s; try again "
                "shortly (see GET /api/ps)"
            )
        if load.error is not None:
            raise load.error
        model_id = load.model_id or (load.entry.model_id if load.entry is not None else key)
        held = self._held.get(model_id)
        if held is None:
            raise UnavailableError(f"{model_id} was unloaded before it could serve")
        return held.node  # reserved by the load for each request that waited

    # --- loading -------------------------------------------------------------

    async def _load(self, key: str, load: _Load) -> None:
        try:
            try:
                if load.entry is None:
                    ranged = await self._fetch_uncached(load)
                    if ranged is not None:
                        await self._bring_in_ranged(ranged, load)
                        return
                async with self._lock:
                    await self._bring_in(load)
            except BaseExceptionGroup as group:  # (raised inside the model's own tasks)
                raise sole_error(group) from None
        except (UnavailableError, ModelNotFoundError) as exc:
            load.error = exc
        except ModelError as exc:  # a file that is not a usable model
            log.error("cannot load %s: %s", key, exc)
            load.error = UnavailableError(f"cannot load {key}: {exc}")
        except Exception as exc:  # anything else must not take the node down either
            log.exception("cannot load %s", key)
            load.error = UnavailableError(f"cannot load {key}: {exc}")
        finally:
            if self._loads.get(key) is load:
                del self._loads[key]
            load.done.set()
            self._pulse()

    async def _bring_in(self, load: _Load) -> None:
        """Check the fit, make room, load the model (holding the lock)."""
        entry = load.entry
        assert entry is not None and self._nursery is not None
        if self._loaded_meanwhile(entry.model_id, load):
            return
        fit = await trio.to_thread.run_sync(self.fit, entry)
        if not fit.fits:
            raise UnavailableError(fit.message())
        self._resize_residents()
        needed_here = self._share_of(fit.needed)
        victims = self.residency.evictions(needed_here, trio.current_time())
        if victims != [] and self.drop_kept_prefixes():  # cheaper than unloading a model
            self._resize_residents()
            victims = self.residency.evictions(needed_here, trio.current_time())
        if victims is None:
            if self.network is None:
                raise UnavailableError(self._no_room(entry.model_id, fit.needed))
            victims = []  # the ring's plan gives this node what its memory allows
        for model_id in victims:
            log.info(
                "unloading %s (least recently used) to make room for %s", model_id, entry.model_id
            )
            await self._unload(model_id)
        model = self._cached_model(entry)
        self._keep(await self._nursery.start(self._hold, model, entry, load.follower), load)

    def _loaded_meanwhile(self, model_id: str, load: _Load) -> bool:
        """Whether `model_id` was loaded meanwhile (under another name): if so,
        reserved now for each request that waited for `load`."""
        if model_id not in self._held:
            return False
        for _ in range(load.waiting):
            self.residency.reserve(model_id, trio.current_time(), load.keep_alive)
        return True

    def _keep(self, held: _Held, load: _Load) -> None:
        """Record a model just loaded: its residency (reserved for the requests
        that waited for it), and the hooks its requests and its ring's peers tell."""
        model_id = held.node.model_id
        keep_alive: KeepAlive
        if load.follower and load.waiting:  # a request here came meanwhile: wanted here too
            held.follower = False
        if held.follower:  # kept for the ring's peers; a grace reservation until they say
            keep_alive, reservations = 0.0, 1
            held.grace = True
        else:
            keep = load.keep_alive
            keep_alive = self.settings.keep_alive if isinstance(keep, Keep) else keep
            reservations = load.waiting
        now = trio.current_time()
        size = _local_size(held.node)
        self.residency.add(model_id, size, now, keep_alive, reservations=reservations)
        self._held[model_id] = held
        held.node.usage = _Usage(self, model_id)
        demand = held.node.cluster.demand
        if demand is not None:
            demand.on_change = self._pulse

    def fit(self, entry: CatalogEntry) -> FitCheck:
        """Whether the cluster (this node and its linked peers) could hold
        `entry` with nothing else loaded (blocking: reads the model's header)."""
        assert self.catalog is not None
        footprint = self.catalog.footprint(entry)
        context = min(self.node_settings.max_context, self.catalog.context_length(entry))
        memory = [self.usable_memory, *self._peer_memory().values()]
        return check_fit(footprint, context, memory, self.settings.memory_fraction)

    def _peer_memory(self) -> dict[str, int]:
        return self.network.peer_memory() if self.network is not None else {}

    def _share_of(self, needed: int) -> int:
        """The part of `needed` bytes this node may expect to hold: all of it
        alone, else its share of the cluster's memory (plans weight by memory)."""
        total = self.usable_memory + sum(self._peer_memory().values())
        return needed if total <= 0 else math.ceil(needed * self.usable_memory / total)

    def _ring_capabilities(self) -> DeviceCapabilities:
        """What this node offers a new model's ring: its memory less what its
        loaded models take (so a plan never counts the same bytes twice)."""
        me = self.default.cluster.plans.state.me.capabilities
        taken = int(self.residency.used / self.settings.memory_fraction)
        accelerator = me.accelerator_memory
        return replace(
            me,
            available_memory=max(0, me.available_memory - taken),
            accelerator_memory=None if accelerator is None else max(0, accelerator - taken),
        )

    def drop_kept_prefixes(self) -> bool:
        """Free the prefix caches every loaded model keeps for later turns (they
        count in its size); True if there were any."""
        dropped = False
        for resident in self.residency.residents():
            ring = self.node_of(resident.model_id).cluster.ring
            if ring.kept_bytes:
                log.info("dropping the prefix caches of %s to make room", resident.model_id)
                ring.drop_prefixes()
                dropped = True
        return dropped

    def _resize_residents(self) -> None:
        """Each loaded model's size as it is now on this node (a ring's plan may
        have moved its layers)."""
        for resident in self.residency.residents():
            self.residency.resize(resident.model_id, _local_size(self.node_of(resident.model_id)))

    def _no_room(self, model_id: str, needed: int) -> str:
        from exoquic.topology.fit import format_size

        others = [r for r in self.residency.residents() if r.model_id != model_id]
        held = ", ".join(f"{r.model_id} ({format_size(r.size)})" for r in others)
        return (
            f"{model_id} needs {format_size(needed)}, and the models loaded now ({held}) "
            f"leave {format_size(self.residency.capacity - self.residency.used)} of "
            f"{format_size(self.residency.capacity)}; the ones in use stay until idle: "
            "try again when they are"
        )

    async def _hold(
        self,
        model: NodeModel,
        entry: CatalogEntry | None,
        follower: bool = False,
        *,
        task_status: trio.TaskStatus[_Held] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Load `model` (alone, or in a ring of its own over the network) and
        keep it until told to stop. A request's load returns once the ring
        serves it; a follower's as soon as its ring is up."""
        model_id = model.source.model_id
        settings = replace(self.node_settings, model=model_id)
        ring = None
        if self.network is not None:
            ring = OnDemandRing(self.network, self._ring_capabilities(), wanted=not follower)
        started = time.perf_counter()
        stopped = trio.Event()
        try:
            async with open_node(settings, None, model, on_demand=ring) as node:
                if ring is not None and not follower:  # until its ring serves it (or cannot)
                    await node.cluster.plans.wait_usable_plan(-1)
                seconds = time.perf_counter() - started
                if follower:
                    log.info("%s: joined its ring for a peer in %.1f s", model_id, seconds)
                else:
                    log.info("loaded %s on demand in %.1f s", model_id, seconds)
                held = _Held(entry, node, trio.Event(), stopped, time.time(), seconds, follower)
                task_status.started(held)
                await held.stop.wait()
                # Free the engine's memory now (MLX keeps freed buffers in a cache).
                await node.cluster.worker.call(node.engine.unload)
        finally:
            stopped.set()

    def _cached_model(self, entry: CatalogEntry) -> NodeModel:
        """The entry's files, its float matrices loaded as `--weights` says."""
        from exoquic.download.ensure import NodeModel

        source = replace(entry.source(), weights=as_hf_weights(self.node_settings.weights))
        return NodeModel(source, source.load_shard)

    async def _unload(self, model_id: str) -> None:
        held = self._held.pop(model_id)
        self.residency.remove(model_id)
        held.stop.set()
        await held.stopped.wait()
        del held
        gc.collect()  # the engine's buffers go now, not at some later collection
        _return_freed_memory()
        log.info("unloaded %s", model_id)
        self._pulse()

    async def _join_for_peers(self, model_id: str) -> bool | None:
        """A ring peer dialled this node for `model_id`: if it is cached here, load
        it as a follower (the network's join hook). True once its ring is up,
        None while it is still coming up, False when it cannot."""
        if self.network is None or self._nursery is None or self.catalog is None:
            return False
        if model_id == self.default.model_id:
            return False  # (its ring is the node's own: a Hello naming it never gets here)
        entry = None
        if model_id not in self._held and model_id not in self._loads:
            entry = await trio.to_thread.run_sync(self.catalog.find, model_id)
            if entry is not None and entry.model_id != model_id:
                return False  # (another name: the peer's ring is of another model id)
            if entry is None and not self.settings.auto_pull:
                return False
        if model_id not in self._held and model_id not in self._loads:
            joining = self._loads[model_id] = _Load(model_id, entry, KEEP, follower=True)
            log.info("a ring peer asked for %s: joining", model_id)
            self._nursery.start_soon(self._load, model_id, joining)
        load = self._loads.get(model_id)
        if load is not None:
            with trio.move_on_after(JOIN_WAIT_S):
                await load.done.wait()
            if not load.done.is_set():
                return None
        return self.network.serves(model_id)

    async def _fetch_uncached(self, load: _Load) -> str | None:
        """A model not in the cache (with --auto-pull, or for a peer's ring): the
        hub GGUF to join a ring of with only this node's byte ranges, as
        `prepare_model` names it; else (a node alone, or safetensors) pull it
        whole now, into `load.entry`, and None."""
        if load.follower:
            return load.name  # the model id of a peer's ring
        target = await self._resolve(load.name)
        if self.network is not None and target.filename is not None:
            if target.entry is not None:
                return target.entry.id
            return gguf_model_id(target.repo_id, target.filename)
        load.entry = await self._pull(load.name, target)
        return None

    async def _bring_in_ranged(self, reference: str, load: _Load) -> None:
        """Join (or start) the ring of a hub GGUF this node has not cached: fetch
        its header now and, once a plan gives this node layers, only their byte
        ranges (as a ring fetches its own model, see download/ensure.py)."""
        from exoquic.download.ensure import prepare_model

        assert self._nursery is not None
        log.info("%s: fetching its header, then only this node's layers", reference)
        model = await prepare_model(reference, weights=self.node_settings.weights)
        model_id = load.model_id = model.source.model_id
        self._aliases[load.name] = model_id
        async with self._lock:
            if self._loaded_meanwhile(model_id, load):
                return
            self._keep(await self._nursery.start(self._hold, model, None, load.follower), load)

    async def _resolve(self, name: str) -> PullTarget:
        """What `exoquic pull name` would fetch (a hub API call for a tag)."""
        from exoquic.download.errors import DownloadError
        from exoquic.download.pull import parse_name, resolve

        try:
            return await trio.to_thread.run_sync(lambda: resolve(parse_name(name)))
        except DownloadError as exc:
            raise ModelNotFoundError(f"cannot pull the model '{name}': {exc}") from exc

    async def _pull(self, name: str, target: PullTarget) -> CatalogEntry:
        """`exoquic pull name` (with --auto-pull), then its catalog entry."""
        from exoquic.download.errors import DownloadError
        from exoquic.download.pull import pull

        assert self.catalog is not None
        async with self._pull_lock:
            try:
                log.info("pulling %s (%s) for a request", name, target.label)
                await trio.to_thread.run_sync(lambda: pull(target))
            except DownloadError as exc:
                raise ModelNotFoundError(f"cannot pull the model '{name}': {exc}") from exc
        entry = self.catalog.find(name)
        if entry is None:
            raise ModelNotFoundError(
                f"pulled '{name}', but it is not a complete model in the cache"
            )
        return entry

    # --- keep-alive ----------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the on-demand models and unload them past their keep-alive (runs forever)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while True:
                changed = self._changed
                await self._share_demand()
                now = trio.current_time()
                for model_id in self.residency.expired(now):
                    async with self._lock:
                        if model_id in self.residency.expired(trio.current_time()):
                            log.info("%s is past its keep-alive", model_id)
                            await self._unload(model_id)
                deadline = self.residency.next_deadline(trio.current_time())
                with trio.move_on_at(math.inf if deadline is None else deadline):
                    await changed.wait()

    async def _share_demand(self) -> None:
        """For each model in a ring of its own: note whether its peers want it,
        and tell them whether this node still does."""
        for model_id, held in list(self._held.items()):
            demand = held.node.cluster.demand
            if demand is None:
                continue
            if demand.heard and held.grace:  # the grace reservation has served
                held.grace = False
                self.residency.unreserve(model_id, trio.current_time())
            self.residency.set_peer_wanted(model_id, demand.peers_want)
            resident = self.residency.get(model_id)
            if resident is not None:
                await demand.tell(resident.wanted(trio.current_time()))

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # --- reports -------------------------------------------------------------

    def loaded(self) -> list[dict[str, Any]]:
        """The loaded models for `/api/ps` and `exoquic ps`: memory, expiry (wall
        clock, None: never), requests running, and which nodes hold which layers."""
        now, wall = trio.current_time(), time.time()
        self._resize_residents()
        return [self._report(r, now, wall) for r in self.residency.residents()]

    def _report(self, resident: Resident, now: float, wall: float) -> dict[str, Any]:
        expiry = resident.expiry(now)
        # Past this node's own keep-alive, kept because a ring peer wants it:
        # it goes when they let go, at no time known here.
        for_peers = resident.peer_wanted and not resident.wanted(now)
        node = self.node_of(resident.model_id)
        held = self._held.get(resident.model_id)
        return {
            "model_id": resident.model_id,
            "node": node,
            "default": resident.pinned,
            "size_bytes": resident.size,
            "expires_at": None if expiry is None or for_peers else wall + (expiry - now),
            "kept_for_peers": for_peers,
            "keep_alive": resident.keep_alive,
            "running": resident.running,
            "loaded_at": held.loaded_at if held else self.default.started_at,
            "load_seconds": held.load_seconds if held else None,
            "nodes": self._holders(resident.model_id, node),
        }

    def node_of(self, model_id: str) -> Node:
        return self.default if model_id == self.default.model_id else self._held[model_id].node

    def _holders(self, model_id: str, node: Node) -> list[dict[str, Any]]:
        """Each node holding layers of the model: [{id, name, layers: [first, last]}]."""
        if node.cluster.network is not None:  # in a ring: as its plan says
            nodes = node.topology().get("nodes", [])
            return [
                {"id": n["id"], "name": n.get("name"), "layers": n["layers"]}
                for n in nodes
                if n.get("layers")
            ]
        me = self.default.cluster.plans.state.me
        return [{"id": me.node_id, "name": me.name, "layers": [0, node.config.num_layers - 1]}]

    def loaded_servables(self) -> list[Servable]:
        """The loaded models as `/v1/models` lists them."""
        return [self._loaded_servable(r) for r in self.residency.residents()]

    def cached_servables(self, exclude: set[str]) -> list[Servable]:
        """The cached models not in `exclude` (blocking: reads files; call it
        from a thread), with their size and whether they fit this node."""
        out = []
        for entry in self.catalog.entries() if self.catalog is not None else []:
            if entry.model_id in exclude:
                continue
            fmt = "gguf" if entry.kind == "gguf" else "safetensors"
            try:
                fit = self.fit(entry)
            except Exception as exc:  # a broken file in the cache: listed, size unknown
                log.debug("cannot size %s: %s", entry.model_id, exc)
                out.append(Servable(entry.model_id, False, None, None, None, False, fmt))
                continue
            weights = fit.needed - fit.kv_bytes
            out.append(Servable(entry.model_id, False, weights, fit.needed, fit.fits, False, fmt))
        return out

    def find_cached(self, name: str) -> CatalogEntry | None:
        return self.catalog.find(name) if self.catalog is not None else None

    def _loaded_servable(self, resident: Resident) -> Servable:
        node = self.node_of(resident.model_id)
        weights = node.requirements.total_bytes
        held = self._held.get(resident.model_id)
        if held is not None and held.entry is not None and self.catalog is not None:
            weights = self.catalog.footprint(held.entry).needed(0)
        return Servable(resident.model_id, True, weights, resident.size, True, resident.pinned)


class _Usage:
    """A node's generations, told to the residency (a node's `usage` hook)."""

    def __init__(self, models: ModelSet, model_id: str) -> None:
        self.models = models
        self.model_id = model_id

    def started(self) -> None:
        self.models.residency.started(self.model_id, trio.current_time())
        self.models._pulse()

    def finished(self) -> None:
        self.models.residency.finished(self.model_id, trio.current_time())
        self.models._pulse()


def _return_freed_memory() -> None:
    """Give the heap glibc's malloc keeps after frees back to the system, so an
    unloaded model's memory shows as free (elsewhere, nothing to do)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _local_size(node: Node) -> int:
    """What a model takes on this node: its shard's weights (all of them when
    alone), their KV cache at full context and the caches its prefix cache
    keeps for later turns."""
    config = node.config
    requirements = node.requirements
    plans = node.cluster.plans
    shard = plans.shard
    if shard is None and plans.state.loaded_key is not None:
        return 0  # the ring's plan leaves this node out
    first, last = (
        (0, config.num_layers - 1) if shard is None else (shard.start_layer, shard.end_layer)
    )
    kv = 2 * (last - first + 1) * config.num_kv_heads * config.head_dim * KV_BYTES_PER_VALUE
    kept = node.cluster.ring.kept_bytes
    return requirements.shard_bytes(first, last) + kv * node.max_context + kept


@asynccontextmanager
async def open_model_set(
    default: Node,
    node_settings: NodeSettings,
    settings: ModelSetSettings | None = None,
    catalog: Catalog | None = None,
) -> AsyncIterator[ModelSet]:
    """The node's models, loading cached ones on demand until the block exits."""
    models = ModelSet(default, catalog or Catalog(), node_settings=node_settings, settings=settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(models.run)
        yield models
        nursery.cancel_scope.cancel()
