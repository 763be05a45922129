"""TinygradEngine on the real default model (SmolLM2-135M-Instruct, Q4_1 GGUF)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from engines.reference import reference_forward

from exoquic.engines.tinygrad.engine import TinygradEngine
from exoquic.models.gguf_loader import load_gguf_shard, read_gguf_config
from exoquic.models.shard import Shard
from exoquic.models.tokenizer import Tokenizer
from exoquic.models.weights import ShardWeights

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
# Logits reach ~25. int16-quantized activations (the fast path) move them by ~3e-3;
# float32 activations (the portable path) by ~6e-5.
FAST_ATOL, PORTABLE_ATOL = 1e-2, 1e-3


@pytest.fixture(scope="module")
def whole_weights(smollm2_gguf_path: Path) -> ShardWeights:
    config = read_gguf_config(smollm2_gguf_path)
    return load_gguf_shard(smollm2_gguf_path, Shard.whole("smollm2", config.num_layers))


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf_path: Path) -> Tokenizer:
    return Tokenizer.from_gguf(smollm2_gguf_path)


@pytest.fixture(scope="module")
def prompt_ids(tokenizer: Tokenizer) -> np.ndarray:
    return np.array(tokenizer.encode(tokenizer.apply_chat_template(QUESTION)), np.int32)


@pytest.fixture(scope="module")
def whole_engine(whole_weights: ShardWeights) -> TinygradEngine:
    engine = TinygradEngine()
    engine.load(whole_weights)
    return engine


def greedy(engine: TinygradEngine, tokenizer: Tokenizer, prompt: np.ndarray, limit: int) -> str:
    logits = engine.forward("greedy", prompt)
    answer: list[int] = []
    while len(answer) < limit:
        token = int(np.argmax(logits))
        if token in tokenizer.eos_token_ids:
            break
        answer.append(token)
        logits = engine.forward("greedy", np.array([token], np.int32))
    engine.release("greedy")
    return tokenizer.decode(answer)


def test_greedy_answer(
    whole_engine: TinygradEngine, tokenizer: Tokenizer, prompt_ids: np.ndarray
) -> None:
    assert greedy(whole_engine, tokenizer, prompt_ids, 12) == "The capital of France is Paris."


def test_matches_numpy_reference(
    whole_weights: ShardWeights, whole_engine: TinygradEngine, prompt_ids: np.ndarray
) -> None:
    expected = reference_forward(whole_weights, prompt_ids)[-1]
    got = whole_engine.forward("reference", prompt_ids)
    whole_engine.release("reference")
    np.testing.assert_allclose(got, expected, atol=FAST_ATOL, rtol=0)
    assert int(np.argmax(got)) == int(np.argmax(expected))


def test_portable_path_matches_numpy_reference(
    whole_weights: ShardWeights, prompt_ids: np.ndarray
) -> None:
    tokens = prompt_ids[-14:]
    expected = reference_forward(whole_weights, tokens)[-1]
    engine = TinygradEngine(fast=False)
    engine.load(whole_weights)
    np.testing.assert_allclose(engine.forward("r", tokens), expected, atol=PORTABLE_ATOL, rtol=0)


def test_three_shard_ring_matches_whole_model(
    smollm2_gguf_path: Path, whole_engine: TinygradEngine, prompt_ids: np.ndarray
) -> None:
    ring = []
    for start, end in [(0, 9), (10, 22), (23, 29)]:
        engine = TinygradEngine()
        engine.load(load_gguf_shard(smollm2_gguf_path, Shard("smollm2", start, end, 30)))
        ring.append(engine)
    steps = [prompt_ids, *(np.array([t], np.int32) for t in (504, 3575, 282, 4649))]
    for step in steps:
        x = step
        for engine in ring:
            x = engine.forward("ring", x)
        # The same kernels on the same rows: the split must not change anything.
        np.testing.assert_allclose(x, whole_engine.forward("ring", step), atol=1e-4, rtol=0)
    whole_engine.release("ring")
