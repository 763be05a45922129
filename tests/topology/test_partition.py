"""Ring memory-weighted partitioning: properties over random clusters, then exact cases.

mlx-lm's pipeline split once left layers on no rank (ml-explore/mlx-lm#1688);
the first property is the guard against that.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from exoquic.topology import (
    Assignment,
    DeviceCapabilities,
    InsufficientMemoryError,
    ModelRequirements,
    NodeInfo,
    partition,
)

GIB = 2**30
MIB = 2**20


def node(node_id: str, available: int, accelerator: int | None = None) -> NodeInfo:
    caps = DeviceCapabilities(max(available, 1), available, "test chip", "tinygrad", accelerator)
    return NodeInfo(node_id, caps)


def counts(assignments: list[Assignment]) -> list[tuple[str, int]]:
    return [(a.node_id, a.shard.layer_count) for a in assignments]


def used_bytes(model: ModelRequirements, a: Assignment) -> int:
    fixed = (model.embed_bytes if a.shard.is_first else 0) + (
        model.head_bytes if a.shard.is_last else 0
    )
    return a.shard.layer_count * model.bytes_per_layer + fixed


Case = tuple[ModelRequirements, list[NodeInfo]]


@st.composite
def clusters(draw: st.DrawFn) -> Case:
    model = ModelRequirements(
        "m",
        num_layers=draw(st.integers(1, 64)),
        bytes_per_layer=draw(st.integers(1, 1000)),
        embed_bytes=draw(st.integers(0, 3000)),
        head_bytes=draw(st.integers(0, 3000)),
    )
    ids = draw(
        st.lists(st.text("abcd", min_size=1, max_size=3), min_size=1, max_size=8, unique=True)
    )
    need = model.total_bytes
    small = 3 * model.bytes_per_layer + model.embed_bytes + model.head_bytes
    # Small nodes hit the one-layer minimum and the fixed bytes; a few shared
    # values make equal budgets (ring ties) common.
    memory = (
        st.integers(0, need)
        | st.integers(0, small)
        | st.sampled_from([0, need // 4, need // 2, need])
    )
    return model, [node(i, draw(memory)) for i in ids]


@given(clusters())
def test_layers_once_contiguous_in_ring_order_within_capacity(case: Case) -> None:
    model, nodes = case
    budget = {n.node_id: n.capabilities.available_memory for n in nodes}
    try:
        assignments = partition(model, nodes, memory_fraction=1.0)
    except InsufficientMemoryError:
        return  # when this may happen is the next test's business
    layers = [layer for a in assignments for layer in a.shard.layers()]
    assert layers == list(range(model.num_layers))  # every layer once, contiguous, in order
    ids = [a.node_id for a in assignments]
    assert ids == sorted(set(ids), key=lambda i: (-budget[i], i))  # ring order, no repeats
    for a in assignments:
        assert a.shard.layer_count >= 1
        assert a.shard.model_id == "m" and a.shard.num_layers == model.num_layers
        assert used_bytes(model, a) <= budget[a.node_id]


@given(clusters())
def test_shard_bytes_are_what_the_partition_charged_and_add_up(case: Case) -> None:
    model, nodes = case
    try:
        assignments = partition(model, nodes, memory_fraction=1.0)
    except InsufficientMemoryError:
        return
    charged = [model.shard_bytes(a.shard.start_layer, a.shard.end_layer) for a in assignments]
    assert charged == [used_bytes(model, a) for a in assignments]
    assert sum(charged) == model.total_bytes


def test_shard_bytes_refuses_layers_outside_the_model() -> None:
    model = ModelRequirements("m", num_layers=4, bytes_per_layer=10)
    with pytest.raises(ValueError, match=r"not within 0\.\.3"):
        model.shard_bytes(2, 4)
    with pytest.raises(ValueError):
        model.shard_bytes(3, 2)


@given(clusters())
def test_fails_only_when_total_memory_is_short(case: Case) -> None:
    model, nodes = case
    total = sum(n.capabilities.available_memory for n in nodes)
    try:
        partition(model, nodes, memory_fraction=1.0)
    except InsufficientMemoryError as e:
        # Rounding slack: a member wastes under one layer; a node left out held
        # less than one layer plus the embedding and head.
        slack = len(nodes) * (model.bytes_per_layer + model.embed_bytes + model.head_bytes)
        assert total < model.total_bytes + slack
        assert e.needed == model.total_bytes and sum(e.budgets.values()) == total
        assert e.shortfall == max(0, model.total_bytes - total)
        assert str(e).endswith(": add a device or use a smaller model")
    else:
        assert total >= model.total_bytes


@given(clusters(), st.randoms(use_true_random=False))
def test_deterministic_under_permutation(case: Case, rnd: random.Random) -> None:
    model, nodes = case
    shuffled = list(nodes)
    rnd.shuffle(shuffled)
    outcomes: list[object] = []
    for order in (nodes, shuffled):
        try:
            outcomes.append(partition(model, order))
        except InsufficientMemoryError as e:
            outcomes.append(str(e))
    assert outcomes[0] == outcomes[1]


@given(st.data())
def test_proportional_when_memory_is_ample(data: st.DataObject) -> None:
    weights = data.draw(st.lists(st.integers(1, 20), min_size=1, max_size=8))
    # Enough layers that every node's ideal share is at least one.
    num_layers = data.draw(st.integers(math.ceil(sum(weights) / min(weights)), 300))
    model = ModelRequirements("m", num_layers, bytes_per_layer=1)
    nodes = [node(f"n{i}", w * num_layers) for i, w in enumerate(weights)]
    got = dict(counts(partition(model, nodes, memory_fraction=1.0)))
    for i, w in enumerate(weights):
        ideal = num_layers * w / sum(weights)
        assert abs(got[f"n{i}"] - ideal) < 1


@given(clusters())
def test_layers_move_only_away_from_full_nodes(case: Case) -> None:
    model, nodes = case
    budget = {n.node_id: n.capabilities.available_memory for n in nodes}
    try:
        assignments = partition(model, nodes, memory_fraction=1.0)
    except InsufficientMemoryError:
        return
    members = sum(budget[a.node_id] for a in assignments)
    ideal = {a.node_id: model.num_layers * budget[a.node_id] / members for a in assignments}
    assume(all(share >= 1 for share in ideal.values()))  # else the one-layer minimum decides

    def full(a: Assignment) -> bool:
        return used_bytes(model, a) + model.bytes_per_layer > budget[a.node_id]

    for a in assignments:
        if a.shard.layer_count < math.floor(ideal[a.node_id]):
            assert full(a)  # it would have taken its share had it fitted
        if a.shard.layer_count > math.ceil(ideal[a.node_id]):
            assert any(full(b) for b in assignments if b is not a)  # it took someone's overflow


def test_thirty_layers_on_16_and_8_gb() -> None:
    model = ModelRequirements("smollm2", 30, bytes_per_layer=100 * MIB)
    nodes = [node("small", 8 * GIB), node("big", 16 * GIB)]
    assignments = partition(model, nodes)
    assert counts(assignments) == [("big", 20), ("small", 10)]
    assert assignments[0].shard.is_first and assignments[1].shard.is_last
    assert (assignments[1].shard.start_layer, assignments[1].shard.end_layer) == (20, 29)


def test_equal_memory_is_ordered_by_node_id() -> None:
    model = ModelRequirements("m", 30, bytes_per_layer=MIB)
    assert counts(partition(model, [node("b", GIB), node("a", GIB)])) == [("a", 15), ("b", 15)]


def test_leftover_layers_go_to_the_front_of_the_ring_on_ties() -> None:
    model = ModelRequirements("m", 10, bytes_per_layer=MIB)
    nodes = [node(n, GIB) for n in "cab"]
    assert counts(partition(model, nodes)) == [("a", 4), ("b", 3), ("c", 3)]


def test_more_nodes_than_layers_drops_the_smallest() -> None:
    model = ModelRequirements("m", 2, bytes_per_layer=MIB)
    nodes = [node("two", 2 * GIB), node("eight", 8 * GIB), node("four", 4 * GIB)]
    assert counts(partition(model, nodes)) == [("eight", 1), ("four", 1)]


def test_head_overflow_shifts_layers_to_the_previous_node() -> None:
    # Equal budgets would give 15 + 15, but the last node also holds a 2 GiB head.
    model = ModelRequirements("m", 30, bytes_per_layer=GIB, head_bytes=2 * GIB)
    nodes = [node("a", 16 * GIB), node("b", 16 * GIB)]
    assert counts(partition(model, nodes, memory_fraction=1.0)) == [("a", 16), ("b", 14)]


def test_capped_and_one_layer_nodes_together() -> None:
    # "a" would take 9.4 of 10 layers but the embedding leaves room for 5; the
    # other two would get 0.3 each, are raised to the one-layer minimum, and
    # then share the 5 layers "a" cannot hold.
    model = ModelRequirements("m", 10, bytes_per_layer=1, embed_bytes=95)
    nodes = [node("a", 100), node("c", 3), node("b", 3)]
    assert counts(partition(model, nodes, memory_fraction=1.0)) == [("a", 5), ("b", 3), ("c", 2)]


def test_tiny_nodes_get_one_layer_each() -> None:
    model = ModelRequirements("m", 10, bytes_per_layer=1)
    nodes = [node("a", 1000), node("b", 2), node("c", 2)]
    assert counts(partition(model, nodes, memory_fraction=1.0)) == [("a", 8), ("b", 1), ("c", 1)]


def test_minimum_of_one_layer_outweighs_a_cap() -> None:
    # "a" would get 5.6 of 10 layers, over its cap of 5; but raising the eight
    # tiny nodes from 0.56 to one layer each leaves "a" only 2, under its cap.
    model = ModelRequirements("m", 10, bytes_per_layer=1, embed_bytes=5)
    nodes = [node("a", 10)] + [node(f"t{i}", 1) for i in range(8)]
    assert counts(partition(model, nodes, memory_fraction=1.0)) == [("a", 2)] + [
        (f"t{i}", 1) for i in range(8)
    ]


def test_node_without_room_for_a_layer_is_left_out() -> None:
    model = ModelRequirements("m", 4, bytes_per_layer=GIB)
    nodes = [node("a", 8 * GIB), node("tiny", GIB // 2), node("empty", 0)]
    assert counts(partition(model, nodes, memory_fraction=1.0)) == [("a", 4)]


def test_single_node_holds_the_whole_model() -> None:
    model = ModelRequirements("m", 30, bytes_per_layer=MIB, embed_bytes=MIB, head_bytes=MIB)
    [only] = partition(model, [node("a", GIB)])
    assert only.shard.layers() == range(30) and only.shard.is_first and only.shard.is_last


def test_accelerator_memory_counts_instead_of_ram() -> None:
    model = ModelRequirements("m", 32, bytes_per_layer=MIB)
    nodes = [node("gpu", 4 * GIB, accelerator=24 * GIB), node("cpu", 8 * GIB)]
    assert counts(partition(model, nodes)) == [("gpu", 24), ("cpu", 8)]


def test_memory_fraction_is_kept_free() -> None:
    model = ModelRequirements("m", 10, bytes_per_layer=GIB)
    nodes = [node("a", 10 * GIB)]
    assert counts(partition(model, nodes, memory_fraction=1.0)) == [("a", 10)]
    with pytest.raises(InsufficientMemoryError):
        partition(model, nodes)  # only 80% of it by default


def test_insufficient_memory_names_the_numbers() -> None:
    model = ModelRequirements("big-model", 30, bytes_per_layer=GIB, embed_bytes=GIB // 2)
    nodes = [node("laptop", 16 * GIB), node("phone", 8 * GIB)]
    with pytest.raises(InsufficientMemoryError) as info:
        partition(model, nodes, memory_fraction=0.5)
    message = str(info.value)
    for text in ("big-model", "30.50 GiB", "12.00 GiB", "laptop: 8.00 GiB", "phone: 4.00 GiB"):
        assert text in message
    assert info.value.needed == 30 * GIB + GIB // 2
    assert info.value.budgets == {"laptop": 8 * GIB, "phone": 4 * GIB}


def test_embedding_larger_than_any_node_is_insufficient() -> None:
    model = ModelRequirements("m", 4, bytes_per_layer=MIB, embed_bytes=10 * GIB)
    with pytest.raises(InsufficientMemoryError):
        partition(model, [node("a", 8 * GIB), node("b", 8 * GIB)], memory_fraction=1.0)


def test_no_nodes_is_insufficient() -> None:
    with pytest.raises(InsufficientMemoryError, match="no nodes"):
        partition(ModelRequirements("m", 1, 1), [])


def test_bad_inputs_are_rejected() -> None:
    model = ModelRequirements("m", 2, bytes_per_layer=1)
    with pytest.raises(ValueError, match="unique"):
        partition(model, [node("a", GIB), node("a", GIB)])
    with pytest.raises(ValueError, match="memory_fraction"):
        partition(model, [node("a", GIB)], memory_fraction=1.5)
    with pytest.raises(ValueError):
        ModelRequirements("m", 0, 1)
    with pytest.raises(ValueError):
        ModelRequirements("m", 1, 1, embed_bytes=-1)


def test_a_tied_embedding_is_charged_once_to_a_node_holding_both_ends() -> None:
    """With tied embeddings the head is the embedding matrix: one node holding
    the whole model holds it once; split over two, first and last each hold it."""
    tied = ModelRequirements("tied", 4, 10 * MIB, 50 * MIB, 51 * MIB, shared_bytes=50 * MIB)
    assert tied.total_bytes == 4 * 10 * MIB + 51 * MIB
    assert tied.shard_bytes(0, 1) == 20 * MIB + 50 * MIB
    assert tied.shard_bytes(2, 3) == 20 * MIB + 51 * MIB
    # 91 MiB fits one node of 100 MiB once the matrix is charged once (not 141 MiB)
    (whole,) = partition(tied, [node("a", 100 * MIB)], 1.0)
    assert whole.shard.layer_count == 4
    untied = ModelRequirements("untied", 4, 10 * MIB, 50 * MIB, 51 * MIB)
    with pytest.raises(InsufficientMemoryError):
        partition(untied, [node("a", 100 * MIB)], 1.0)
    with pytest.raises(ValueError, match="shared"):
        ModelRequirements("bad", 4, 10 * MIB, 50 * MIB, 1 * MIB, shared_bytes=50 * MIB)
