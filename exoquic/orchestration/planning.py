"""Membership and plan agreement for one node (sans-IO: no trio, no sockets).

`PlanState` holds what a node knows: which peers are live (connected and
introduced by `Hello`), the plan it adopted, which nodes declared themselves
ready for which plan, and whether the live nodes can hold the model at all.
The plan loop (`plans.py`) feeds it events and acts on its answers:

- `proposal_due()`: this node is the coordinator (smallest live node id) and
  its adopted plan is not its own proposal for the current members: propose.
- `offer(plan, proposer)`: adopt a proposal if its version is higher than the
  adopted one. Versions are never reused on a node, so `(version)` names one
  plan everywhere it was adopted; a coordinator whose proposal lost a tie
  simply proposes again with a higher version.
- `mark_loaded()` / `on_ready()`: readiness per `(version, proposer)`;
  `held_shard`: the one record of which layers this node holds.
- `active_plan()`: the adopted plan once every node in it is live and ready.
"""

from __future__ import annotations

from dataclasses import dataclass

from exoquic.models.shard import Shard
from exoquic.topology import (
    DEFAULT_MEMORY_FRACTION,
    DeviceCapabilities,
    InsufficientMemoryError,
    ModelRequirements,
    NodeInfo,
    Plan,
    PlanAgreement,
    Proposal,
    partition,
    plan_for,
)

PlanKey = tuple[int, str]
"""(version, proposer): what a `PlanReady` refers to."""


@dataclass(frozen=True)
class Member:
    """A node of the cluster as its `Hello` described it."""

    node_id: str
    name: str
    capabilities: DeviceCapabilities


class PlanState:
    """One node's view of the cluster's membership and plan (see the module docstring)."""

    def __init__(
        self,
        me: Member,
        model: ModelRequirements,
        memory_fraction: float = DEFAULT_MEMORY_FRACTION,
    ) -> None:
        self.me = me
        self.model = model
        self.memory_fraction = memory_fraction
        self.peers: dict[str, Member] = {}
        self.agreement = PlanAgreement()
        self.highest_version = -1
        self._ready: dict[str, PlanKey] = {}
        self._loaded: Proposal | None = None  # the plan whose shard this node holds
        self._basis: frozenset[str] | None = None  # members of our last proposal
        self.unavailable: str | None = None

    # --- membership ---------------------------------------------------------

    def members(self) -> list[Member]:
        """This node and its live peers, by node id."""
        return sorted([self.me, *self.peers.values()], key=lambda m: m.node_id)

    def member_ids(self) -> frozenset[str]:
        return frozenset([self.me.node_id, *self.peers])

    @property
    def coordinator(self) -> str:
        """The live node that proposes plans: the smallest node id."""
        return min(self.member_ids())

    def peer_up(self, member: Member, seen_version: int = -1) -> None:
        """A peer connected and introduced itself (`seen_version`: its newest plan)."""
        self.peers[member.node_id] = member
        self.highest_version = max(self.highest_version, seen_version)

    def peer_down(self, node_id: str) -> None:
        self.peers.pop(node_id, None)
        self._ready.pop(node_id, None)
        # Even if it comes back at once (a restart, a blip), it may have lost
        # its shard and missed proposals: the coordinator must propose again.
        self._basis = None

    def check_capacity(self) -> str | None:
        """Recompute whether the live nodes can hold the model; the reason if not."""
        try:
            partition(self.model, self._node_infos(), self.memory_fraction)
        except InsufficientMemoryError as exc:
            self.unavailable = str(exc)
        else:
            self.unavailable = None
        return self.unavailable

    # --- proposals ----------------------------------------------------------

    @property
    def adopted(self) -> Proposal | None:
        return self.agreement.current

    def proposal_due(self) -> bool:
        """Whether this node should propose a plan for the current members now."""
        if self.coordinator != self.me.node_id or self.unavailable is not None:
            return False
        adopted = self.adopted
        own = adopted is not None and adopted.proposer == self.me.node_id
        return not own or self._basis != self.member_ids() or self._rival_plan()

    def _rival_plan(self) -> bool:
        """A peer is ready for another plan of our version or newer: it adopted a
        rival proposal first, so ours can never become active. Propose anew."""
        key = self.adopted_key
        return key is not None and any(
            ready != key and ready[0] >= key[0] for ready in self._ready.values()
        )

    def propose(self) -> Plan:
        """A plan for the live members, newer than any version seen.

        Raises InsufficientMemoryError (and records it) when they cannot hold
        the model. The caller sends the plan to every peer and `offer`s it here.
        """
        try:
            plan = plan_for(
                self._node_infos(), self.model, self.highest_version + 1, self.memory_fraction
            )
        except InsufficientMemoryError as exc:
            self.unavailable = str(exc)
            raise
        self._basis = self.member_ids()
        return plan

    def offer(self, plan: Plan, proposer: str) -> bool:
        """Consider a proposal; True when it is adopted (its version is the highest yet)."""
        self.highest_version = max(self.highest_version, plan.version)
        adopted = self.adopted
        if adopted is not None and plan.version <= adopted.plan.version:
            return False
        return self.agreement.offer(Proposal(plan, proposer))

    # --- readiness ----------------------------------------------------------

    @property
    def adopted_key(self) -> PlanKey | None:
        adopted = self.adopted
        return None if adopted is None else (adopted.plan.version, adopted.proposer)

    @property
    def loaded_key(self) -> PlanKey | None:
        """The plan whose shard this node holds and serves."""
        loaded = self._loaded
        return None if loaded is None else (loaded.plan.version, loaded.proposer)

    @property
    def held_shard(self) -> Shard | None:
        """The layers this node holds now (None: none, or none loaded yet)."""
        loaded = self._loaded
        return None if loaded is None else loaded.plan.shard_of(self.me.node_id)

    def loaded_plan(self) -> Plan | None:
        """The adopted plan if this node has loaded its shard of it."""
        adopted = self.adopted
        if adopted is None or self.loaded_key != self.adopted_key:
            return None
        return adopted.plan

    def mark_loaded(self, proposal: Proposal) -> None:
        """This node now holds its shard of `proposal` (or nothing, if not in it)."""
        self._loaded = proposal

    def on_ready(self, node_id: str, key: PlanKey) -> None:
        self.highest_version = max(self.highest_version, key[0])
        if node_id in self.peers:
            self._ready[node_id] = key

    def active_plan(self) -> Plan | None:
        """The adopted plan, once every node in it is live and ready for it."""
        plan = self.loaded_plan()
        if plan is None:
            return None
        key = self.adopted_key
        for node_id in plan.node_ids:
            if node_id != self.me.node_id and self._ready.get(node_id) != key:
                return None
        return plan

    def _node_infos(self) -> list[NodeInfo]:
        return [NodeInfo(m.node_id, m.capabilities) for m in self.members()]
