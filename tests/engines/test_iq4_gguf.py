"""A GGUF quantized as llama.cpp's IQ4_XS mix (with IQ4_NL fallbacks) loads from the file
and both engines answer like the float64 reference on the weights they compute on: the
file's exact weights, but for MLX's documented rounding of the Q6_K head."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from engines.mlx.affine import mlx_dequantize
from engines.reference import reference_forward

from exoquic.engines.mlx.engine import MLXEngine
from exoquic.engines.tinygrad.engine import TinygradEngine
from exoquic.models.gguf_loader import load_gguf_shard
from exoquic.models.shard import Shard
from exoquic.models.weights import QuantizedTensor, ShardWeights

TOOLS = Path(__file__).resolve().parents[2] / "tools"
LAYERS = 2
PROMPT = np.array([5, 17, 3, 8800, 42, 0, 61, 9, 33], dtype=np.int32)


@pytest.fixture(scope="module")
def iq4_weights(tmp_path_factory: pytest.TempPathFactory) -> ShardWeights:
    """4 query heads on 1 kv head (attn_v gets Q5_K), FFN 640: `ffn_down`'s rows of 640
    values are not whole 256-value super-blocks, so they fall back to IQ4_NL."""
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))
    from gen_gguf import ModelShape, generate

    shape = ModelShape("llama", LAYERS, 256, 640, 4, 1, 49152, 10000.0, 1e-5, 2048, False)
    path = tmp_path_factory.mktemp("iq4") / "iq4_xs.gguf"
    generate(shape, "iq4_xs", path, seed=3)
    return load_gguf_shard(path, Shard.whole("iq4", LAYERS))


def test_iq4_matrices_stay_in_their_blocks(iq4_weights: ShardWeights) -> None:
    kinds = {
        name: t.kind for name, t in iq4_weights.tensors.items() if isinstance(t, QuantizedTensor)
    }
    assert kinds["model.embed_tokens.weight"] == "iq4_xs"
    assert kinds["model.layers.0.self_attn.q_proj.weight"] == "iq4_xs"
    assert kinds["model.layers.1.mlp.gate_proj.weight"] == "iq4_xs"
    assert kinds["model.layers.1.mlp.down_proj.weight"] == "iq4_nl"
    assert kinds["model.layers.0.self_attn.v_proj.weight"] == "q5_k"
    assert kinds["lm_head.weight"] == "q6_k"


@pytest.mark.parametrize("engine_kind", [TinygradEngine, MLXEngine])
def test_engines_answer_like_the_reference(
    iq4_weights: ShardWeights, engine_kind: type[TinygradEngine] | type[MLXEngine]
) -> None:
    engine = engine_kind(max_context=64)
    engine.load(iq4_weights)
    engine.forward("r", PROMPT[:-1])  # prefill, then one decode step
    logits = engine.forward("r", PROMPT[-1:])
    expected = reference_forward(as_seen_by(engine_kind, iq4_weights), PROMPT)[-1]
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(logits, expected, atol=1e-4 * scale, rtol=0)
    assert int(np.argmax(logits)) == int(np.argmax(expected))


def as_seen_by(engine_kind: type, w: ShardWeights) -> ShardWeights:
    """The weights an engine computes on: MLX rounds Q6_K (see `ggml_pack`); IQ4 it keeps."""
    if engine_kind is not MLXEngine:
        return w
    tensors = {
        name: mlx_dequantize(t) if isinstance(t, QuantizedTensor) and t.kind == "q6_k" else t
        for name, t in w.tensors.items()
    }
    return ShardWeights(w.config, w.shard, tensors)
