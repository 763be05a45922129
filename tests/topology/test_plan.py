"""Plans: ring navigation, strict wire form, and agreement between concurrent proposers."""

from __future__ import annotations

import random

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exoquic.models.shard import Shard
from exoquic.topology import (
    Assignment,
    DeviceCapabilities,
    ModelRequirements,
    NodeInfo,
    Plan,
    PlanAgreement,
    Proposal,
    plan_for,
    winner,
)

GIB = 2**30


def node(node_id: str, gib: int) -> NodeInfo:
    return NodeInfo(node_id, DeviceCapabilities(gib * GIB, gib * GIB, "chip", "tinygrad"))


def three_node_plan(version: int = 1) -> Plan:
    model = ModelRequirements("smollm2", 30, bytes_per_layer=2**20)
    return plan_for([node("c", 4), node("a", 16), node("b", 8)], model, version)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    num_layers = draw(st.integers(1, 100))
    cuts = draw(st.sets(st.integers(1, num_layers - 1), max_size=8)) if num_layers > 1 else set()
    bounds = [0, *sorted(cuts), num_layers]
    ids = draw(
        st.lists(
            st.text(min_size=1, max_size=20),
            min_size=len(bounds) - 1,
            max_size=len(bounds) - 1,
            unique=True,
        )
    )
    model_id = draw(st.text(min_size=1, max_size=50))
    assignments = [
        Assignment(i, Shard(model_id, lo, hi - 1, num_layers))
        for i, lo, hi in zip(ids, bounds, bounds[1:], strict=False)
    ]
    return Plan(draw(st.integers(0, 2**63 - 1)), model_id, tuple(assignments))


def test_ring_navigation() -> None:
    plan = three_node_plan()
    assert plan.node_ids == ["a", "b", "c"]
    assert (plan.first_node, plan.last_node) == ("a", "c")
    assert [plan.next_node(n) for n in plan.node_ids] == ["b", "c", "a"]
    assert plan.shard_of("a") == Shard("smollm2", 0, 16, 30)
    assert plan.shard_of("c") == Shard("smollm2", 26, 29, 30)
    assert plan.shard_of("stranger") is None
    with pytest.raises(KeyError):
        plan.next_node("stranger")


def test_single_node_is_its_own_successor() -> None:
    plan = plan_for([node("solo", 8)], ModelRequirements("m", 4, 1), version=0)
    assert plan.next_node("solo") == plan.first_node == plan.last_node == "solo"


@given(plans())
def test_roundtrip_through_cbor(plan: Plan) -> None:
    assert Plan.from_dict(cbor2.loads(cbor2.dumps(plan.to_dict()))) == plan


def wire(**changes: object) -> dict:
    d = three_node_plan().to_dict()
    d.update(changes)
    return d


def assignments(*triples: tuple[object, object, object]) -> list[dict]:
    return [{"node_id": n, "start_layer": s, "end_layer": e} for n, s, e in triples]


@pytest.mark.parametrize(
    ("d", "error"),
    [
        ("plan", "must be a map"),
        (wire(extra=1), "unknown keys"),
        (wire(version=-1), "version must be in"),
        (wire(version=True), "version must be an integer"),
        (wire(model_id=""), "model_id must have"),
        (wire(num_layers=0), "num_layers must be in"),
        (wire(assignments=[]), "list of 1..1024"),
        (wire(assignments={"a": 1}), "list of 1..1024"),
        (wire(assignments=["a"]), "assignment must be a map"),
        (wire(assignments=assignments(("a", 0, 29), ("b", 0, 29))), "starts at layer 0"),
        (wire(assignments=assignments(("a", 0, 9), ("b", 20, 29))), "starts at layer 20"),
        (wire(assignments=assignments(("a", 0, 9), ("a", 10, 29))), "appears twice"),
        (wire(assignments=assignments(("a", 0, 9), ("b", 10, 28))), "covers layers 0..28"),
        (wire(assignments=assignments(("a", 0, 30))), "end_layer must be in"),
        (wire(assignments=assignments(("a", 5, 4))), "end_layer must be in"),
        (wire(assignments=assignments(("a", 0.0, 29))), "start_layer must be an integer"),
        (wire(assignments=assignments((7, 0, 29))), "node_id must be a string"),
    ],
)
def test_malformed_plans_are_rejected(d: object, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Plan.from_dict(d)


def test_shards_of_another_model_are_rejected() -> None:
    shards = (Assignment("a", Shard("m", 0, 0, 2)), Assignment("b", Shard("other", 1, 1, 2)))
    with pytest.raises(ValueError, match="not of this plan's model"):
        Plan(0, "m", shards)


def test_higher_version_wins_then_smaller_proposer() -> None:
    old, new = three_node_plan(1), three_node_plan(2)
    assert winner(Proposal(old, "a"), Proposal(new, "z")).proposer == "z"
    assert winner(Proposal(new, "z"), Proposal(old, "a")).proposer == "z"
    assert winner(Proposal(new, "z"), Proposal(new, "b")).proposer == "b"
    assert winner(Proposal(new, "b"), Proposal(new, "z")).proposer == "b"


@given(
    st.lists(st.tuples(st.integers(0, 3), st.sampled_from("abc")), min_size=1, unique=True),
    st.randoms(use_true_random=False),
)
def test_agreement_does_not_depend_on_arrival_order(
    offers: list[tuple[int, str]], rnd: random.Random
) -> None:
    proposals = [Proposal(three_node_plan(v), p) for v, p in offers]
    shuffled = list(proposals)
    rnd.shuffle(shuffled)
    outcomes = []
    for order in (proposals, shuffled):
        agreement = PlanAgreement()
        for p in order:
            agreement.offer(p)
        outcomes.append(agreement.current)
    best = max(offers, key=lambda vp: (vp[0], -ord(vp[1])))
    assert outcomes[0] == outcomes[1] == Proposal(three_node_plan(best[0]), best[1])


def test_agreement_reports_changes() -> None:
    agreement = PlanAgreement()
    assert agreement.offer(Proposal(three_node_plan(3), "b"))
    assert not agreement.offer(Proposal(three_node_plan(2), "a"))
    assert not agreement.offer(Proposal(three_node_plan(3), "c"))
    assert agreement.offer(Proposal(three_node_plan(3), "a"))
