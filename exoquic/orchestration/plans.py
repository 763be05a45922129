"""This node's plans: the record (`Plans`) and the loop that drives it (`PlanLoop`).

`Plans` wraps the sans-IO `PlanState` (membership, proposals, readiness and
the one record of which shard this node holds) with a way to wait for it to
change; the plan loop alone writes it, the ring and the API read it.

`PlanLoop` turns membership into plans: it settles membership changes,
proposes a plan when this node coordinates, adopts proposals, loads this
node's shard of the adopted plan (reloading only when it changed), says
`PlanReady`, and reports its preparation progress. It tells the ring what
plan changes mean for requests (`RequestControl`) and sends through `Peers`;
nothing calls back into it but the router handing it peers' events. The
sequence, and why, is in docs/ring.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import trio

from exoquic.download.progress import reporting_to
from exoquic.models.shard import Shard
from exoquic.models.weights import ShardWeights
from exoquic.orchestration.generation import UnavailableError
from exoquic.orchestration.peers import Peers
from exoquic.orchestration.planning import Member, PlanState
from exoquic.orchestration.progress import Preparation, ProgressGate
from exoquic.orchestration.worker import EngineWorker
from exoquic.topology import (
    Assignment,
    InsufficientMemoryError,
    ModelRequirements,
    Plan,
    Proposal,
)
from exoquic.wire.errors import ErrorCode, RemoteProtocolError
from exoquic.wire.messages import Message, ModelProgress, PlanProposal, PlanReady

log = logging.getLogger(__name__)

LOAD_RETRY_DELAY = 10.0
"""After a failed load (say, the hub unreachable), try again this much later
unless a new plan or a membership change comes first."""

ShardLoader = Callable[[Shard], ShardWeights]


class Plans:
    """The record of this node's plans and a way to wait for it to change."""

    def __init__(self, state: PlanState, plan_timeout: float = 60.0) -> None:
        self.state = state
        self.plan_timeout = plan_timeout
        self._changed = trio.Event()

    @property
    def node_id(self) -> str:
        return self.state.me.node_id

    @property
    def shard(self) -> Shard | None:
        """The layers this node holds now."""
        return self.state.held_shard

    def pulse(self) -> None:
        """Wake everything waiting for a change of membership or plan."""
        self._changed.set()
        self._changed = trio.Event()

    def next_change(self) -> trio.Event:
        """An event set at the next `pulse` (take it before looking at the state)."""
        return self._changed

    def serving_plan(self, version: int) -> Plan | None:
        """The plan `version` if this node holds its shard of it now, else None."""
        plan = self.state.loaded_plan()
        return plan if plan is not None and plan.version == version else None

    async def wait_usable_plan(self, newer_than: int) -> Plan:
        """An active plan newer than `newer_than`; UnavailableError when none comes
        within `plan_timeout` or when the live nodes cannot hold the model."""
        with trio.move_on_after(self.plan_timeout):
            while True:
                changed = self._changed
                if self.state.unavailable is not None:
                    raise UnavailableError(self.state.unavailable)
                plan = self.state.active_plan()
                if plan is not None and plan.version > newer_than:
                    return plan
                await changed.wait()
        raise UnavailableError(
            f"the cluster agreed on no plan within {self.plan_timeout:.0f} s "
            f"({self.status()}); see GET /v1/topology"
        )

    def status(self) -> str:
        state = self.state
        if state.unavailable is not None:
            return "unavailable"
        if state.active_plan() is not None:
            return "serving"
        if state.adopted is not None and state.loaded_key != state.adopted_key:
            return "loading"
        return "forming"

    @classmethod
    def alone(cls, member: Member, model_id: str, num_layers: int) -> Plans:
        """A node alone whose engine already holds the whole model: plan 0, active."""
        state = PlanState(member, ModelRequirements(model_id, num_layers, 1))
        plan = Plan(0, model_id, (Assignment(member.node_id, Shard.whole(model_id, num_layers)),))
        state.offer(plan, member.node_id)
        state.mark_loaded(Proposal(plan, member.node_id))
        return cls(state)


class RequestControl(Protocol):
    """What plan changes do to the requests in flight (the ring)."""

    def interrupt(self, affected: Callable[[Plan], bool], reason: str) -> None:
        """Make every attempt whose plan is `affected` replay under a newer plan."""

    def fail_all(self, reason: str) -> None:
        """End every attempt this node originated with a final error."""

    def forget_served(self) -> None:
        """The shard was replaced, and every cache with it."""

    def drop_prefixes(self) -> None:
        """A new plan was adopted: the kept prefix caches of the old one go."""


class PlanLoop:
    """Membership -> proposals -> readiness -> loading (see the module docstring)."""

    def __init__(
        self,
        plans: Plans,
        peers: Peers,
        requests: RequestControl,
        worker: EngineWorker,
        load_shard: ShardLoader,
        *,
        settle_time: float = 0.3,
        join_timeout: float = 5.0,
    ) -> None:
        self.plans = plans
        self.state = plans.state
        self.peers = peers
        self.requests = requests
        self.worker = worker
        self.model_id = plans.state.model.model_id
        self.settle_time = settle_time
        self.join_timeout = join_timeout
        self._load_shard = load_shard
        self._membership_changed = trio.Event()
        self._sends: trio.Nursery | None = None  # this loop's own, while it runs
        # This node's model preparation, and the latest one each linked peer reported.
        self.preparation = Preparation(self.model_id)
        self.peer_progress: dict[str, ModelProgress] = {}
        self._preparation_changed = trio.Event()

    # --- events from peers (handed over by the router) ------------------------

    def peer_joined(self, member: Member, plan_version: int | None) -> None:
        self.state.peer_up(member, -1 if plan_version is None else plan_version)
        key = self.state.loaded_key
        if key is not None:  # tell the newcomer what this node serves...
            self._send_soon(member.node_id, PlanReady(*key))
        progress = self.preparation.current(trio.current_time())
        if progress is not None:  # ...and how far its preparation is
            self._send_soon(member.node_id, progress)
        self._membership_changed.set()
        self.plans.pulse()

    def peer_left(self, node_id: str) -> None:
        self.state.peer_down(node_id)
        self.peer_progress.pop(node_id, None)
        self._membership_changed.set()
        self.plans.pulse()

    def receive(self, sender: str, message: Message) -> None:
        """A plan message from a peer; RemoteProtocolError for anything else."""
        if isinstance(message, PlanProposal):
            self._adopt(self._plan_from(message), sender)
        elif isinstance(message, PlanReady):
            self.state.on_ready(sender, (message.version, message.proposer))
            self.plans.pulse()
        elif isinstance(message, ModelProgress):
            self.peer_progress[sender] = message
        else:
            raise RemoteProtocolError(
                f"unexpected {type(message).__name__} on a ring link", ErrorCode.UNEXPECTED_MESSAGE
            )

    def _plan_from(self, message: PlanProposal) -> Plan:
        try:
            plan = Plan.from_dict(message.plan)
        except ValueError as exc:
            raise RemoteProtocolError(f"bad plan: {exc}", ErrorCode.INVALID_FIELD) from exc
        if plan.model_id != self.model_id:
            raise RemoteProtocolError(f"plan for {plan.model_id!r}", ErrorCode.INVALID_FIELD)
        return plan

    def _adopt(self, plan: Plan, proposer: str) -> None:
        if self.state.offer(plan, proposer):
            name = self.peers.name(proposer)
            log.info("adopted plan %d from %s: %s", plan.version, name, _ranges(plan))
            self.requests.interrupt(lambda p: p.version < plan.version, "the plan changed")
            self.requests.drop_prefixes()
            self.plans.pulse()

    # --- the loop -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Propose, load and announce plans as membership changes (runs forever)."""
        async with trio.open_nursery() as nursery:
            self._sends = nursery
            nursery.start_soon(self._report_progress)
            task_status.started()
            with trio.move_on_after(self.join_timeout):
                # Give the peers discovery already knows a chance to link first,
                # so the first plan spans them instead of being replaced at once.
                await self.peers.wait_for_known_peers()
            self._membership_changed.set()
            while True:
                await self._next_move()

    async def _next_move(self) -> None:
        changed = self.plans.next_change()
        if self._membership_changed.is_set():
            await self._settle()
            self._check_capacity()
        if self.state.proposal_due():
            self._propose()
        adopted = self.state.adopted
        if adopted is not None and self.state.loaded_key != self.state.adopted_key:
            await self._load(adopted)
            return
        await changed.wait()

    async def _settle(self) -> None:
        """Wait until membership stayed unchanged for `settle_time`."""
        while True:
            self._membership_changed = trio.Event()
            with trio.move_on_after(self.settle_time):
                await self._membership_changed.wait()
                continue
            return

    def _check_capacity(self) -> None:
        reason = self.state.check_capacity()
        if reason is not None:
            log.error("the ring cannot serve: %s", reason)
            self.requests.fail_all(reason)
            self.plans.pulse()

    def _propose(self) -> None:
        try:
            plan = self.state.propose()
        except InsufficientMemoryError as exc:
            self.requests.fail_all(str(exc))
            self.plans.pulse()
            return
        for node_id in self.peers.live_peers():
            self._send_soon(node_id, PlanProposal(plan.to_dict()))
        self._adopt(plan, self.plans.node_id)

    async def _load(self, proposal: Proposal) -> None:
        """Hold this node's shard of `proposal` (reloading only if it changed), then say so."""
        plan = proposal.plan
        shard = plan.shard_of(self.plans.node_id)
        if shard != self.plans.shard:
            if shard is None:
                log.info("plan %d leaves this node out: unloading", plan.version)
                await self.worker.call(self.worker.engine.unload)
            else:
                log.info("loading layers %d-%d", shard.start_layer, shard.end_layer)
                try:
                    weights = await self._fetch_weights(shard)
                    await self.worker.load(weights)
                except Exception as exc:  # a failed download must not take the node down
                    await self._load_failed(shard, proposal, exc)
                    return
                del weights
            self.requests.forget_served()
        self.preparation.ready()
        self._wake_progress_reporter()
        self.state.mark_loaded(proposal)
        log.info("ready for plan %d", plan.version)
        for node_id in self.peers.live_peers():
            await self.peers.send_quietly(node_id, PlanReady(plan.version, proposal.proposer))
        self.plans.pulse()

    async def _load_failed(self, shard: Shard, proposal: Proposal, exc: Exception) -> None:
        """Report the failure, then pause before the plan loop tries again."""
        log.error("cannot load layers %d-%d: %s", shard.start_layer, shard.end_layer, exc)
        log.debug("load failure", exc_info=exc)
        self.preparation.fail(str(exc) or type(exc).__name__)
        self._wake_progress_reporter()
        with trio.move_on_after(LOAD_RETRY_DELAY):
            while self.state.adopted == proposal and not self._membership_changed.is_set():
                changed = self.plans.next_change()
                await changed.wait()

    def _send_soon(self, node_id: str, message: Message) -> None:
        if self._sends is not None:  # (the loop is not running: nobody to tell)
            self._sends.start_soon(self.peers.send_quietly, node_id, message)

    # --- preparation progress -------------------------------------------------

    async def _fetch_weights(self, shard: Shard) -> ShardWeights:
        """Run the shard loader (download, then read) with its progress reported."""
        download = self.preparation.start(trio.current_time())
        self._wake_progress_reporter()
        with reporting_to(download):
            weights = await trio.to_thread.run_sync(self._load_shard, shard)
        self.preparation.loading()
        self._wake_progress_reporter()
        return weights

    def _wake_progress_reporter(self) -> None:
        self._preparation_changed.set()
        self._preparation_changed = trio.Event()

    def preparation_states(self) -> dict[str, ModelProgress]:
        """The latest preparation state of this node and of each linked peer."""
        states = dict(self.peer_progress)
        mine = self.preparation.current(trio.current_time())
        if mine is not None:
            states[self.plans.node_id] = mine
        return states

    async def _report_progress(self) -> None:
        """Send this node's preparation state to every linked peer whenever it
        changes, at most twice a second (runs forever). One send after another
        keeps the messages in order on every link."""
        gate = ProgressGate()
        while True:
            changed = self._preparation_changed
            now = trio.current_time()
            state = self.preparation.current(now)
            message = gate.poll(state, now)
            if message is not None:
                for node_id in self.peers.live_peers():
                    await self.peers.send_quietly(node_id, message)
            with trio.move_on_at(gate.next_poll(state, now)):
                await changed.wait()


def _ranges(plan: Plan) -> str:
    return ", ".join(
        f"{a.node_id} {a.shard.start_layer}-{a.shard.end_layer}" for a in plan.assignments
    )
