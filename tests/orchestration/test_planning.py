"""PlanState: membership, proposals, readiness, driven by hand like a sans-IO protocol."""

from __future__ import annotations

import pytest

from exoquic.identity.keys import Identity
from exoquic.orchestration.planning import Member, PlanState
from exoquic.topology import (
    DeviceCapabilities,
    InsufficientMemoryError,
    ModelRequirements,
    Proposal,
)

MIB = 1 << 20
MODEL = ModelRequirements("m", num_layers=12, bytes_per_layer=10 * MIB, embed_bytes=20 * MIB,
                          head_bytes=20 * MIB)  # fmt: skip


def member(name: str, memory_mib: int) -> Member:
    caps = DeviceCapabilities(memory_mib * MIB, memory_mib * MIB, "cpu", "mlx")
    return Member(Identity.generate().node_id, name, caps)


class Cluster:
    """Several PlanStates wired together by hand: every message is delivered at once."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members
        self.states = {m.node_id: PlanState(m, MODEL, memory_fraction=1.0) for m in members}
        for state in self.states.values():
            for other in members:
                if other.node_id != state.me.node_id:
                    state.peer_up(other)

    def run_proposals(self) -> None:
        for node_id, state in self.states.items():
            state.check_capacity()
            if state.proposal_due():
                plan = state.propose()
                for other in self.states.values():  # the proposer offers itself too
                    other.offer(plan, node_id)

    def load_all(self) -> None:
        for node_id, state in self.states.items():
            key = state.adopted_key
            assert key is not None and state.adopted is not None
            state.mark_loaded(state.adopted)
            for other_id, other in self.states.items():
                if other_id != node_id:
                    other.on_ready(node_id, key)


def test_the_smallest_node_id_coordinates() -> None:
    cluster = Cluster([member("a", 100), member("b", 100), member("c", 100)])
    smallest = min(cluster.states)
    due = [node_id for node_id, s in cluster.states.items() if s.proposal_due()]
    assert due == [smallest]
    assert all(s.coordinator == smallest for s in cluster.states.values())


def test_all_nodes_adopt_one_plan_and_activate_once_everyone_is_ready() -> None:
    cluster = Cluster([member("a", 100), member("b", 60), member("c", 200)])
    cluster.run_proposals()
    plans = {s.adopted.plan for s in cluster.states.values() if s.adopted}
    assert len(plans) == 1
    plan = plans.pop()
    assert sorted(plan.node_ids) == sorted(cluster.states)
    assert all(s.active_plan() is None for s in cluster.states.values())  # nobody loaded yet
    cluster.load_all()
    assert all(s.active_plan() == plan for s in cluster.states.values())
    # nothing more to propose while membership stays the same
    assert not any(s.proposal_due() for s in cluster.states.values())


def test_a_plan_is_not_active_until_every_member_is_ready() -> None:
    cluster = Cluster([member("a", 100), member("b", 100)])
    cluster.run_proposals()
    first, second = cluster.states.values()
    key = first.adopted_key
    assert key is not None and first.adopted is not None
    first.mark_loaded(first.adopted)
    assert first.active_plan() is None
    first.on_ready(second.me.node_id, (key[0], "exq-somebody-else"))  # another plan's readiness
    assert first.active_plan() is None
    first.on_ready(second.me.node_id, key)
    assert first.active_plan() is not None


def test_a_dead_member_deactivates_the_plan_and_the_survivors_replan() -> None:
    cluster = Cluster([member("a", 100), member("b", 100), member("c", 100)])
    cluster.run_proposals()
    cluster.load_all()
    old = next(iter(cluster.states.values())).active_plan()
    assert old is not None
    dead = old.node_ids[1]
    del cluster.states[dead]
    for state in cluster.states.values():
        state.peer_down(dead)
        assert state.active_plan() is None
    cluster.run_proposals()
    cluster.load_all()
    for state in cluster.states.values():
        plan = state.active_plan()
        assert plan is not None and plan.version > old.version
        assert dead not in plan.node_ids and len(plan.node_ids) == 2


def test_equal_versions_are_never_adopted_twice() -> None:
    a, b = member("a", 200), member("b", 200)
    state = PlanState(a, MODEL, memory_fraction=1.0)
    state.peer_up(b)
    lone = PlanState(b, MODEL, memory_fraction=1.0)
    plan_b = lone.propose()  # b alone, version 0
    assert state.offer(plan_b, b.node_id)
    same_version = state.propose()  # a proposes a newer version, not a rival version 0
    assert same_version.version == plan_b.version + 1
    rival = plan_b.__class__(plan_b.version, plan_b.model_id, same_version.assignments)
    assert not state.offer(rival, a.node_id)
    assert state.offer(same_version, a.node_id)


def test_versions_seen_in_hellos_and_readiness_push_proposals_higher() -> None:
    a, b = member("a", 200), member("b", 200)
    state = PlanState(a, MODEL, memory_fraction=1.0)
    state.peer_up(b, seen_version=41)
    assert state.propose().version == 42
    state.on_ready(b.node_id, (99, b.node_id))
    assert state.propose().version == 100


def test_survivors_that_cannot_hold_the_model_say_why() -> None:
    # Any two of these hold the model (12 layers x 10 MiB + 40 MiB), one alone does not.
    cluster = Cluster([member("a", 90), member("b", 90), member("c", 90)])
    cluster.run_proposals()
    cluster.load_all()
    survivor = next(iter(cluster.states.values()))
    for dead in list(survivor.peers):
        survivor.peer_down(dead)
    reason = survivor.check_capacity()
    assert reason is not None and "not enough memory" in reason
    assert survivor.unavailable == reason
    assert not survivor.proposal_due()
    with pytest.raises(InsufficientMemoryError):
        survivor.propose()
    survivor.peer_up(member("d", 90))
    assert survivor.check_capacity() is None


def test_a_node_too_small_for_a_layer_is_left_out_but_stays_a_member() -> None:
    cluster = Cluster([member("big", 200), member("tiny", 5)])
    cluster.run_proposals()
    cluster.load_all()
    plan = next(iter(cluster.states.values())).active_plan()
    assert plan is not None and len(plan.node_ids) == 1
    tiny = next(s for s in cluster.states.values() if s.me.name == "tiny")
    assert tiny.active_plan() == plan  # it can still originate requests


def test_a_coordinator_whose_proposal_lost_a_tie_proposes_again() -> None:
    a, b = sorted([member("a", 200), member("b", 200)], key=lambda m: m.node_id)
    coordinator, other = PlanState(a, MODEL, 1.0), PlanState(b, MODEL, 1.0)
    rival = other.propose()  # b, alone for a moment, proposed version 0 and adopted it
    other.offer(rival, b.node_id)
    other.mark_loaded(Proposal(rival, b.node_id))
    coordinator.peer_up(b)
    other.peer_up(a)
    mine = coordinator.propose()  # a did not know: also version 0
    coordinator.offer(mine, a.node_id)
    assert not other.offer(mine, a.node_id)  # b keeps the first version 0 it saw
    assert not coordinator.proposal_due()
    coordinator.on_ready(b.node_id, (rival.version, b.node_id))  # b is ready for its own
    assert coordinator.proposal_due()
    again = coordinator.propose()
    assert again.version == 1
    assert coordinator.offer(again, a.node_id) and other.offer(again, a.node_id)


def test_a_member_that_left_and_came_back_gets_a_new_plan() -> None:
    cluster = Cluster([member("a", 100), member("b", 100)])
    cluster.run_proposals()
    cluster.load_all()
    coordinator = cluster.states[min(cluster.states)]
    other = next(s for s in cluster.states.values() if s is not coordinator)
    coordinator.peer_down(other.me.node_id)
    coordinator.peer_up(other.me)  # same id: a restart within the idle timeout
    assert coordinator.member_ids() == frozenset(cluster.states)
    assert coordinator.proposal_due()
