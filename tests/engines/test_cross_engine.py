"""MLX and tinygrad agree on the real default model, alone and chained.

The two engines run the same GGUF weights with different kernels, so their
logits differ slightly (tinygrad's fast path quantizes activations to int16);
what must not differ is the greedy text. The mixed chain hands the hidden state
from MLX to tinygrad through the wire's tensor encoding, as two nodes would.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from exoquic.engines.base import Engine
from exoquic.engines.registry import create_engine
from exoquic.models.gguf_loader import load_gguf_shard
from exoquic.models.shard import Shard
from exoquic.models.tokenizer import Tokenizer
from exoquic.wire.tensors import decode_tensor, encode_tensor

pytestmark = pytest.mark.slow

TOKENS = 32
LAYERS = 30
SPLIT = 14  # MLX runs layers 0..14, tinygrad 15..29
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers.",
]

Step = Callable[[str, np.ndarray], np.ndarray]


def engine_for(name: str, path: Path, start: int, end: int) -> Engine:
    engine = create_engine(name, max_context=512)
    engine.load(load_gguf_shard(path, Shard("smollm2", start, end, LAYERS)))
    return engine


def through_the_wire(hidden: np.ndarray) -> np.ndarray:
    return decode_tensor(encode_tensor(hidden))


def greedy_tokens(step: Step, prompt: np.ndarray, request_id: str) -> list[int]:
    tokens: list[int] = []
    logits = step(request_id, prompt)
    while len(tokens) < TOKENS:
        tokens.append(int(np.argmax(logits)))
        logits = step(request_id, np.array(tokens[-1:], np.int32))
    return tokens


@pytest.fixture(scope="module")
def prompts(smollm2_gguf_path: Path) -> list[np.ndarray]:
    tokenizer = Tokenizer.from_gguf(smollm2_gguf_path)
    return [
        np.array(
            tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": p}])),
            np.int32,
        )
        for p in PROMPTS
    ]


def test_mlx_tinygrad_and_a_mixed_chain_decode_the_same_tokens(
    smollm2_gguf_path: Path, prompts: list[np.ndarray]
) -> None:
    mlx_whole = engine_for("mlx", smollm2_gguf_path, 0, LAYERS - 1)
    tinygrad_whole = engine_for("tinygrad", smollm2_gguf_path, 0, LAYERS - 1)
    mlx_head = engine_for("mlx", smollm2_gguf_path, 0, SPLIT)
    tinygrad_tail = engine_for("tinygrad", smollm2_gguf_path, SPLIT + 1, LAYERS - 1)

    def mixed(request_id: str, inputs: np.ndarray) -> np.ndarray:
        hidden = mlx_head.forward(request_id, inputs)
        return tinygrad_tail.forward(request_id, through_the_wire(hidden))

    for i, prompt in enumerate(prompts):
        expected = greedy_tokens(mlx_whole.forward, prompt, f"mlx-{i}")
        assert greedy_tokens(tinygrad_whole.forward, prompt, f"tg-{i}") == expected, PROMPTS[i]
        assert greedy_tokens(mixed, prompt, f"mixed-{i}") == expected, PROMPTS[i]
