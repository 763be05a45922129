"""Node.check_request: the one place a request is checked before the ring sees it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from test_cluster import CONFIG, GREEDY, MODEL_ID

from exoquic.orchestration.generation import (
    ContextLengthError,
    GenerationRequest,
    RequestError,
    UnavailableError,
)
from exoquic.orchestration.node import Node
from exoquic.orchestration.worker import EngineWorker

CONTEXT = 16


def alone() -> Node:
    """A node alone whose engine nobody may touch (a worker that never runs)."""
    worker = EngineWorker.__new__(EngineWorker)
    worker.engine = SimpleNamespace(name="mlx")  # type: ignore[assignment]
    tokenizer: Any = SimpleNamespace(longest_token_chars=8)
    return Node(MODEL_ID, CONFIG, tokenizer, worker, CONTEXT)


async def test_an_empty_prompt_is_refused_before_anything_is_sent() -> None:
    node = alone()
    with pytest.raises(RequestError, match="empty"):
        async for _ in node.generate(GenerationRequest("r", (), GREEDY)):
            pass
    assert node.cluster.ring.stats.requests == 0


def test_a_prompt_must_leave_room_and_an_asked_max_tokens_must_fit() -> None:
    node = alone()
    node.check_request(CONTEXT - 1)
    with pytest.raises(ContextLengthError, match="at least one reply token") as caught:
        node.check_request(CONTEXT)
    assert caught.value.param is None
    node.check_request(4, max_tokens=CONTEXT - 4)
    with pytest.raises(ContextLengthError, match="plus max_tokens 13") as caught:
        node.check_request(4, max_tokens=CONTEXT - 3)
    assert caught.value.param == "max_tokens"


def test_a_cluster_that_cannot_hold_the_model_is_unavailable() -> None:
    node = alone()
    node.cluster.plans.state.unavailable = "not enough memory"
    with pytest.raises(UnavailableError, match="not enough memory"):
        node.check_request(3)
