"""MLXEngine on the real default model (SmolLM2-135M-Instruct, Q4_1 GGUF)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from engines.reference import reference_forward

from exoquic.engines.mlx.engine import MLXEngine
from exoquic.engines.mlx.ggml_pack import GROUP_SIZE, to_affine
from exoquic.models.gguf_loader import load_gguf_shard, read_gguf_config
from exoquic.models.shard import Shard
from exoquic.models.tokenizer import Tokenizer
from exoquic.models.weights import QuantizedTensor, ShardWeights

pytestmark = pytest.mark.slow

# Logits reach ~30; float32 MLX and the float64 oracle differ by ~6e-5.
REF_ATOL = 1e-3
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def whole_weights(smollm2_gguf_path: Path) -> ShardWeights:
    config = read_gguf_config(smollm2_gguf_path)
    return load_gguf_shard(smollm2_gguf_path, Shard.whole("smollm2", config.num_layers))


@pytest.fixture(scope="module")
def prompt_ids(smollm2_gguf_path: Path) -> np.ndarray:
    tokenizer = Tokenizer.from_gguf(smollm2_gguf_path)
    return np.array(tokenizer.encode(tokenizer.apply_chat_template(QUESTION)), np.int32)


@pytest.fixture(scope="module")
def whole_engine(whole_weights: ShardWeights) -> MLXEngine:
    engine = MLXEngine()
    engine.load(whole_weights)
    return engine


@pytest.mark.parametrize(
    "name", ["model.embed_tokens.weight", "model.layers.7.self_attn.k_proj.weight"]
)
def test_real_weights_repack_bit_exactly(whole_weights: ShardWeights, name: str) -> None:
    t = whole_weights.tensors[name]
    assert isinstance(t, QuantizedTensor) and t.kind in ("q8_0", "q4_1")
    p = to_affine(t)
    arrays = [mx.array(a) for a in (p.weight, p.scales, p.biases)]
    out = mx.dequantize(*arrays, group_size=GROUP_SIZE, bits=p.bits)
    assert np.array_equal(np.array(out), t.dequantize())


def test_greedy_answer(
    smollm2_gguf_path: Path, whole_engine: MLXEngine, prompt_ids: np.ndarray
) -> None:
    tokenizer = Tokenizer.from_gguf(smollm2_gguf_path)
    logits = whole_engine.forward("france", prompt_ids)
    answer: list[int] = []
    while len(answer) < 12:
        token = int(np.argmax(logits))
        if token in tokenizer.eos_token_ids:
            break
        answer.append(token)
        logits = whole_engine.forward("france", np.array([token], np.int32))
    whole_engine.release("france")
    assert tokenizer.decode(answer) == "The capital of France is Paris."


def test_three_shard_ring_matches_whole_model(
    smollm2_gguf_path: Path, whole_engine: MLXEngine, prompt_ids: np.ndarray
) -> None:
    ring = []
    for start, end in [(0, 9), (10, 22), (23, 29)]:
        engine = MLXEngine()
        engine.load(load_gguf_shard(smollm2_gguf_path, Shard("smollm2", start, end, 30)))
        ring.append(engine)
    # A short prefill (the prompt's last turn; MLX on CPU is slow), then one decode step.
    steps = [prompt_ids[-14:], np.array([504], np.int32)]
    for step in steps:
        x = step
        for engine in ring:
            x = engine.forward("ring", x)
        expected = whole_engine.forward("ring", step)
        # Same operations on the same data: only summation order may differ.
        np.testing.assert_allclose(x, expected, atol=1e-3, rtol=0)
        assert int(np.argmax(x)) == int(np.argmax(expected))
    whole_engine.release("ring")


def test_matches_numpy_reference(
    whole_weights: ShardWeights, whole_engine: MLXEngine, prompt_ids: np.ndarray
) -> None:
    tokens = prompt_ids[-14:]
    expected = reference_forward(whole_weights, tokens)[-1]
    got = whole_engine.forward("reference", tokens)
    whole_engine.release("reference")
    # float32 through 30 layers against float64 on the same dequantized weights.
    np.testing.assert_allclose(got, expected, atol=REF_ATOL, rtol=0)
