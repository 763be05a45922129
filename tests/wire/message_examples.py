"""Valid messages of every registered type, by type string: one source for the
round-trip tests (tests/wire/test_messages.py) and the fuzz seeds (fuzz/make_corpus.py).

Varied enough that the fuzzer starts from every branch (optional fields set and
not, each enum, the largest values). Everything is fixed, no randomness, so the
seeds are reproducible: after editing, re-run `uv run python fuzz/make_corpus.py`.
"""

from __future__ import annotations

import numpy as np

from exoquic.identity.node_id import node_id_from_public_key
from exoquic.wire.errors import ErrorCode
from exoquic.wire.messages import (
    PROTOCOL_VERSION,
    ErrorMessage,
    Forward,
    Hello,
    Interest,
    Message,
    ModelProgress,
    PairConfirm,
    PairFinish,
    PairRequest,
    PairResponse,
    Ping,
    PlanProposal,
    PlanReady,
    Pong,
    Release,
    RequestFailed,
    TokenResult,
)

KEY = bytes(range(32))
NODE_ID = node_id_from_public_key(KEY)
PLAN = {
    "version": 3, "model_id": "smollm2-135m", "num_layers": 30,
    "assignments": [{"node_id": NODE_ID, "start_layer": 0, "end_layer": 29}],
}  # fmt: skip

EXAMPLES: dict[str, list[Message]] = {
    "hello": [
        Hello(PROTOCOL_VERSION, NODE_ID, "laptop", 1, "smollm2-135m", None,
              {"total_memory": 16 << 30, "available_memory": 8 << 30, "chip": "m2",
               "engine": "mlx"}),
        Hello(PROTOCOL_VERSION, NODE_ID, "desk", 2**64 - 1, "m" * 256, 2**64 - 1, {}),
        Hello(PROTOCOL_VERSION, NODE_ID, "den", 3, "qwen2.5-0.5b", 4, {}, on_demand=True),
    ],
    "interest": [Interest(True), Interest(False)],
    "ping": [Ping(7), Ping(2**64 - 1)],
    "pong": [Pong(7), Pong(0)],
    "error": [ErrorMessage(ErrorCode.INVALID_FIELD, "bad field"), ErrorMessage(2**62 - 1, "")],
    "forward": [
        Forward("req-1", 3, 0, np.array([1, 2, 3], np.int32), NODE_ID, sampling={}),
        Forward("req-1", 1, 0, np.array([1, 2, 3], np.int32), NODE_ID,
                sampling={"temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 1234}),
        Forward("req-1", 3, 3, np.ones((2, 576), np.float32), NODE_ID,
                sampling={"temperature": 0.7, "seed": 2**64 - 1}),
        Forward("req-2", 0, 9, np.ones((1, 8), np.float16), NODE_ID),
        Forward("req-1", 1, 3, np.ones((2, 4), np.float16), NODE_ID, step=2),
        Forward("req-3", 1, 4, np.array([7], np.int32), NODE_ID, step=2**32 - 1),
        Forward("req-4", 1, 0, np.array([5, 6], np.int32), NODE_ID,
                sampling={"temperature": 0.7, "min_p": 0.05, "presence_penalty": -0.5,
                          "frequency_penalty": 1.0, "repetition_penalty": 1.1,
                          "logit_bias": [[5, -100.0], [9, 2.5]],
                          "grammar": '{"grammars": []}'},
                tokens=(5, 6)),
        Forward("req-4", 1, 2, np.ones((1, 8), np.float32), NODE_ID, step=1, tokens=(7,)),
        Forward("req-6", 1, 0, np.array([7], np.int32), NODE_ID, logprobs=0),
        Forward("req-6", 1, 1, np.array([7], np.int32), NODE_ID, step=1, logprobs=20),
        Forward("req-5", 1, 0, np.array([7, 8, 9], np.int32), NODE_ID, logprobs=5, score=(8, 9)),
        Forward("req-4", 2, 128, np.array([7, 8], np.int32), NODE_ID, sampling={},
                reuse_from="req-1.0", reuse_length=128),
    ],
    "token": [
        TokenResult("req-1", 42),
        TokenResult("req-1", 49151),
        TokenResult("req-1", 2**32 - 1),
        TokenResult("req-1", 7, -0.25, ()),
        TokenResult("req-1", 7, -float("inf"), ((7, -0.25), (2**32 - 1, -1.5))),
        TokenResult("req-5", 7, -0.5, (), ((-1.0, ((3, -0.5),)), (-2.0, ()))),
    ],
    "release": [Release("req-1"), Release("req-1.0", keep=256)],
    "request_failed": [
        RequestFailed("req-1", "plan 3 is gone", True),
        RequestFailed("req-4.0", "no cached prefix req-1.0", True, prefix_miss=True),
    ],
    "plan_proposal": [
        PlanProposal(PLAN),
        PlanProposal({"version": 3, "assignments": [{"node_id": NODE_ID}]}),
    ],
    "plan_ready": [PlanReady(3, NODE_ID)],
    "model_progress": [
        ModelProgress("org/model", "downloading", 30 << 20, 90 << 20, 1, 5, 1 << 20, ""),
        ModelProgress("org/model", "loading", 0, 0, 0, 0, 0, ""),
        ModelProgress("m" * 256, "ready", 2**64 - 1, 2**64 - 1, 2**32 - 1, 2**32 - 1, 0, ""),
        ModelProgress("org/model", "failed", 5, 10, 0, 1, 0, "disk full"),
        ModelProgress("org/model", "failed", 5, 10, 0, 1, 0, "x" * 1024),
    ],
    "pair_request": [PairRequest(KEY, "phone")],
    "pair_response": [PairResponse(KEY, "desk", b"A" + bytes(32))],
    "pair_finish": [PairFinish(b"B" + bytes(32), bytes(32))],
    "pair_confirm": [PairConfirm(bytes(32))],
}  # fmt: skip


def all_examples() -> list[Message]:
    """Every example, type by type."""
    return [message for messages in EXAMPLES.values() for message in messages]
