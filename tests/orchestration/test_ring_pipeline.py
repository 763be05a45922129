"""How a ring node caps its decode batches so that requests form a pipeline (pure logic)."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from exoquic.orchestration.ring import pipeline_batch


def test_one_node_batches_every_request() -> None:
    assert pipeline_batch(8, 1) == 8


def test_requests_split_into_one_group_per_node() -> None:
    assert pipeline_batch(8, 2) == 4
    assert pipeline_batch(8, 3) == 3
    assert pipeline_batch(1, 3) == 1
    assert pipeline_batch(0, 2) == 1


@given(st.integers(0, 500), st.integers(0, 20))
def test_the_batch_is_the_smallest_that_needs_no_more_groups_than_nodes(
    requests: int, nodes: int
) -> None:
    batch = pipeline_batch(requests, nodes)
    assert batch >= 1
    assert math.ceil(requests / batch) <= max(1, nodes)
    if batch > 1:  # one step smaller would need a group more than there are nodes
        assert math.ceil(requests / (batch - 1)) > max(1, nodes)
