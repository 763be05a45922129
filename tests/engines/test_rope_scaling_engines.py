"""Llama 3 RoPE scaling: MLX, tinygrad and the numpy reference agree, and it matters.

The tiny model's scaling uses a short "original context" (128) so that, unlike
Llama 3's 8192, it changes the angles within the few dozen positions a fast
test runs: a model that ignored it would decode different tokens. The random
model has its own output head and sharpened attention (q/k weights doubled):
a tied random model just repeats one token, and near-uniform attention would
hide the positions, so neither could tell scaled from plain RoPE.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from engines import reference
from engines.tiny_model import TINY, random_tensors

from exoquic.engines.base import Engine
from exoquic.engines.mlx.engine import MLXEngine
from exoquic.engines.tinygrad.engine import TinygradEngine
from exoquic.models.config import Llama3RopeScaling, ModelConfig
from exoquic.models.shard import Shard
from exoquic.models.weights import ShardWeights, shard_tensor_names

SCALING = Llama3RopeScaling(
    factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=128
)
PLAIN = dataclasses.replace(TINY, tie_word_embeddings=False)
SCALED = dataclasses.replace(PLAIN, rope_scaling=SCALING)
PROMPT = np.array([5, 17, 3, 88, 42, 0, 61, 9, 33, 70, 2], dtype=np.int32)
TOKENS = 20
LAYERS = SCALED.num_layers

Step = Callable[[str, np.ndarray], np.ndarray]


def llama3_rope(x: np.ndarray, theta: float, s: Llama3RopeScaling = SCALING) -> np.ndarray:
    """Rotary embedding with Llama 3 scaling, written apart from `exoquic.models.rope`.

    Frequency by frequency, the way llama.cpp's converter states the rule.
    """
    T, _, hd = x.shape
    inv_freq = []
    for i in range(hd // 2):
        f = theta ** (-2 * i / hd)
        wavelength = 2 * math.pi / f
        context = s.original_max_position_embeddings
        if wavelength < context / s.high_freq_factor:
            inv_freq.append(f)
        elif wavelength > context / s.low_freq_factor:
            inv_freq.append(f / s.factor)
        else:
            smooth = (context / wavelength - s.low_freq_factor) / (
                s.high_freq_factor - s.low_freq_factor
            )
            inv_freq.append(f * ((1 - smooth) / s.factor + smooth))
    angles = np.arange(T, dtype=np.float64)[:, None] * np.array(inv_freq)  # (T, hd/2)
    cos, sin = np.cos(angles)[:, None, :], np.sin(angles)[:, None, :]
    x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


@pytest.fixture(scope="module")
def weights() -> Callable[[Shard], ShardWeights]:
    """Any shard of the scaled tiny model (float32, untied head, sharp attention)."""
    tensors = random_tensors(SCALED, quantized=False, seed=2)
    for name, t in tensors.items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            tensors[name] = 2 * t

    def weights_for(shard: Shard) -> ShardWeights:
        return ShardWeights(SCALED, shard, {n: tensors[n] for n in shard_tensor_names(shard)})

    return weights_for


@pytest.fixture
def scaled_reference(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The numpy reference forward, with its plain RoPE swapped for `llama3_rope`."""
    monkeypatch.setattr(reference, "_rope", llama3_rope)
    yield


def engine(
    kind: type[Engine], weights: Callable[[Shard], ShardWeights], start: int, end: int
) -> Engine:
    e = kind(max_context=256)
    e.load(weights(Shard("tiny", start, end, LAYERS)))
    return e


def greedy(step: Step, request_id: str) -> list[int]:
    tokens: list[int] = []
    logits = step(request_id, PROMPT)
    while len(tokens) < TOKENS:
        tokens.append(int(np.argmax(logits)))
        logits = step(request_id, np.array(tokens[-1:], np.int32))
    return tokens


def reference_greedy(weights: ShardWeights) -> list[int]:
    """Greedy tokens from the stateless reference, recomputing the whole sequence each step."""
    sequence = list(PROMPT)
    for _ in range(TOKENS):
        logits = reference.reference_forward(weights, np.array(sequence, np.int32))[-1]
        sequence.append(int(np.argmax(logits)))
    return sequence[len(PROMPT) :]


def whole(weights: Callable[[Shard], ShardWeights], config: ModelConfig) -> ShardWeights:
    w = weights(Shard.whole("tiny", LAYERS))
    return ShardWeights(config, w.shard, w.tensors)


@pytest.mark.usefixtures("scaled_reference")
def test_engines_and_reference_decode_the_same_tokens(
    weights: Callable[[Shard], ShardWeights],
) -> None:
    expected = reference_greedy(whole(weights, SCALED))
    mlx = engine(MLXEngine, weights, 0, LAYERS - 1)
    tinygrad = engine(TinygradEngine, weights, 0, LAYERS - 1)
    mlx_head = engine(MLXEngine, weights, 0, 1)
    tinygrad_tail = engine(TinygradEngine, weights, 2, LAYERS - 1)

    def mixed(request_id: str, inputs: np.ndarray) -> np.ndarray:
        return tinygrad_tail.forward(request_id, mlx_head.forward(request_id, inputs))

    assert greedy(mlx.forward, "mlx") == expected
    assert greedy(tinygrad.forward, "tinygrad") == expected
    assert greedy(mixed, "mixed") == expected


@pytest.mark.usefixtures("scaled_reference")
def test_prefill_logits_match_the_reference(weights: Callable[[Shard], ShardWeights]) -> None:
    want = reference.reference_forward(whole(weights, SCALED), PROMPT)[-1]
    atol = 1e-4 * max(1.0, float(np.abs(want).max()))
    for kind in (MLXEngine, TinygradEngine):
        got = engine(kind, weights, 0, LAYERS - 1).forward("r", PROMPT)
        np.testing.assert_allclose(got, want, atol=atol, rtol=0, err_msg=kind.name)


def test_scaling_changes_the_output(weights: Callable[[Shard], ShardWeights]) -> None:
    """Without this, the tests above could pass with the scaling ignored."""
    plain = reference_greedy(whole(weights, PLAIN))  # the reference's own plain RoPE
    scaled_logits = engine(MLXEngine, weights, 0, LAYERS - 1).forward("r", PROMPT)
    plain_logits = reference.reference_forward(whole(weights, PLAIN), PROMPT)[-1]
    assert np.abs(scaled_logits - plain_logits).max() > 0.05 * np.abs(plain_logits).max()
    assert greedy(engine(MLXEngine, weights, 0, LAYERS - 1).forward, "r") != plain


# Llama 3.2 1B and 3B geometry (head_dim, query heads, kv heads: groups of 4 and 3)
# on a narrow 2-layer model, with their vocabulary, theta, tied head and scaling.
LLAMA_3_2_SCALING = Llama3RopeScaling(
    factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192
)


@pytest.mark.slow
@pytest.mark.parametrize("head_dim,heads,kv_heads", [(64, 8, 2), (128, 6, 2)], ids=["1b", "3b"])
def test_llama_3_2_geometry(
    monkeypatch: pytest.MonkeyPatch, head_dim: int, heads: int, kv_heads: int
) -> None:
    config = dataclasses.replace(
        TINY,
        vocab_size=128256,
        hidden_size=256,
        intermediate_size=512,
        num_layers=2,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        rope_theta=500000.0,
        rope_scaling=LLAMA_3_2_SCALING,
    )
    shard = Shard.whole("tiny", config.num_layers)
    tensors = random_tensors(config, quantized=False, seed=1)
    weights = ShardWeights(config, shard, {n: tensors[n] for n in shard_tensor_names(shard)})
    rope = functools.partial(llama3_rope, s=LLAMA_3_2_SCALING)
    monkeypatch.setattr(reference, "_rope", rope)
    tokens = np.concatenate([PROMPT, [128000, 128255, 7]]).astype(np.int32)
    want = reference.reference_forward(weights, tokens)
    atol = 1e-4 * max(1.0, float(np.abs(want).max()))
    for kind in (MLXEngine, TinygradEngine):
        e = kind(max_context=256)
        e.load(weights)
        got = [e.forward("r", tokens[: len(PROMPT)])]  # prefill, then one decode step per token
        got += [e.forward("r", tokens[i : i + 1]) for i in range(len(PROMPT), len(tokens))]
        np.testing.assert_allclose(
            got, want[len(PROMPT) - 1 :], atol=atol, rtol=0, err_msg=kind.name
        )
