"""A plan: the versioned partition the whole ring agrees on.

A plan fixes the ring order, each node's layers and the model. Requests run
under one plan; a new plan (higher version) is made only when membership
changes. Plans travel between nodes as CBOR maps (`to_dict` / `from_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exoquic.models.shard import Shard
from exoquic.topology._checks import check_int, check_map, check_text
from exoquic.topology.partition import (
    DEFAULT_MEMORY_FRACTION,
    Assignment,
    ModelRequirements,
    NodeInfo,
    partition,
)

MAX_VERSION = 2**63 - 1
MAX_LAYERS = 100_000
MAX_NODES = 1024


@dataclass(frozen=True)
class Plan:
    """Assignments in ring order; activations flow from each node to the next and
    the last node's successor is the first.

    Invariants (checked on construction): at least one node, node ids unique,
    shards of `model_id` covering layers 0..num_layers-1 exactly once, in order.
    """

    version: int
    model_id: str
    assignments: tuple[Assignment, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "assignments", tuple(self.assignments))
        check_int(self.version, "plan version", 0, MAX_VERSION)
        check_text(self.model_id, "plan model_id")
        if not self.assignments:
            raise ValueError("a plan needs at least one node")
        if len({a.node_id for a in self.assignments}) != len(self.assignments):
            raise ValueError("a node appears twice in the plan")
        num_layers = self.assignments[0].shard.num_layers
        next_layer = 0
        for a in self.assignments:
            s = a.shard
            if s.model_id != self.model_id or s.num_layers != num_layers:
                raise ValueError(f"shard of {a.node_id} is not of this plan's model")
            if s.start_layer != next_layer:
                raise ValueError(
                    f"shard of {a.node_id} starts at layer {s.start_layer}, expected {next_layer}"
                )
            next_layer = s.end_layer + 1
        if next_layer != num_layers:
            raise ValueError(f"plan covers layers 0..{next_layer - 1} of {num_layers}")

    @property
    def num_layers(self) -> int:
        return self.assignments[0].shard.num_layers

    @property
    def node_ids(self) -> list[str]:
        return [a.node_id for a in self.assignments]

    @property
    def first_node(self) -> str:
        """The node that embeds tokens."""
        return self.assignments[0].node_id

    @property
    def last_node(self) -> str:
        """The node that applies the head and samples."""
        return self.assignments[-1].node_id

    def shard_of(self, node_id: str) -> Shard | None:
        """The node's shard, or None if the plan leaves it out."""
        for a in self.assignments:
            if a.node_id == node_id:
                return a.shard
        return None

    def next_node(self, node_id: str) -> str:
        """The ring successor of `node_id`; raises KeyError if it is not in the plan."""
        ids = self.node_ids
        if node_id not in ids:
            raise KeyError(node_id)
        return ids[(ids.index(node_id) + 1) % len(ids)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model_id": self.model_id,
            "num_layers": self.num_layers,
            "assignments": [
                {
                    "node_id": a.node_id,
                    "start_layer": a.shard.start_layer,
                    "end_layer": a.shard.end_layer,
                }
                for a in self.assignments
            ],
        }

    @classmethod
    def from_dict(cls, d: object) -> Plan:
        """Decode a peer's plan; raises ValueError on any malformed or inconsistent field."""
        m = check_map(d, "plan", {"version", "model_id", "num_layers", "assignments"})
        model_id = check_text(m["model_id"], "plan model_id")
        num_layers = check_int(m["num_layers"], "plan num_layers", 1, MAX_LAYERS)
        items = m["assignments"]
        if not isinstance(items, list) or not 0 < len(items) <= MAX_NODES:
            raise ValueError(f"plan assignments must be a list of 1..{MAX_NODES} entries")
        assignments = []
        for item in items:
            a = check_map(item, "assignment", {"node_id", "start_layer", "end_layer"})
            start = check_int(a["start_layer"], "start_layer", 0, num_layers - 1)
            end = check_int(a["end_layer"], "end_layer", start, num_layers - 1)
            shard = Shard(model_id, start, end, num_layers)
            assignments.append(Assignment(check_text(a["node_id"], "node_id"), shard))
        return cls(m["version"], model_id, tuple(assignments))  # checks the rest


def plan_for(
    nodes: list[NodeInfo],
    model: ModelRequirements,
    version: int,
    memory_fraction: float = DEFAULT_MEMORY_FRACTION,
) -> Plan:
    """Partition `model` over `nodes` as plan `version` (see `partition`)."""
    return Plan(version, model.model_id, tuple(partition(model, nodes, memory_fraction)))


@dataclass(frozen=True)
class Proposal:
    """A plan and who proposed it. `proposer` should come from the authenticated
    connection that delivered the plan, so that a peer cannot speak for another."""

    plan: Plan
    proposer: str


def winner(a: Proposal, b: Proposal) -> Proposal:
    """The proposal every node settles on: the higher version, and on equal
    versions the smaller proposer id. A proposer never reuses a version, so the
    choice does not depend on which proposal arrived first."""
    if a.plan.version != b.plan.version:
        return a if a.plan.version > b.plan.version else b
    return a if a.proposer <= b.proposer else b


class PlanAgreement:
    """The winning proposal a node has seen so far (no I/O: the node feeds it
    its own proposals and those its peers send)."""

    def __init__(self) -> None:
        self.current: Proposal | None = None

    def offer(self, proposal: Proposal) -> bool:
        """Consider a proposal; True when it becomes the current one."""
        if self.current is not None and winner(self.current, proposal) is self.current:
            return False
        self.current = proposal
        return True
