"""Every family on both engines, whole and split at a layer boundary, against mlx-lm.

A tiny random model of each family is written in Hugging Face layout
(`fixtures.tiny_hf`); mlx-lm loads it with its own code and gives the
reference logits of every position in one pass. exoquic prefills a prompt and
then decodes token by token, so the comparison covers the KV cache and RoPE at
growing positions too. The same model converted to GGUF by tools/hf_to_gguf.py
(Q/K rows permuted for the llama family, as llama.cpp does) must give the
logits of the safetensors copy.

Tolerances, relative to the largest reference logit (|logit| reaches ~5):
- float32 weights: 1e-4 on both engines (MLX computes in float32 like mlx-lm;
  tinygrad's float32 weights take float32 products; what remains is rounding);
- GGUF copy vs safetensors copy: 1e-5 (the same float32 numbers, only their
  row order in the file differs);
- Q8_0 weights through the engines' block kernels: 1e-4 between the GGUF and the
  safetensors-quantized copy (the same blocks), 5e-2 against mlx-lm's float32.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from fixtures.tiny_hf import FAMILIES, mlx_lm_logits, write_tiny_model
from models.ggml_blocks import ALL_KINDS, random_blocks

from exoquic.engines.base import ForwardItem
from exoquic.engines.mlx.engine import MLXEngine
from exoquic.engines.tinygrad.engine import TinygradEngine
from exoquic.models.config import ModelConfig
from exoquic.models.gguf_loader import load_gguf_shard
from exoquic.models.hf_loader import load_hf_shard
from exoquic.models.shard import Shard
from exoquic.models.weights import ShardWeights, WeightArray, shard_tensor_names
from exoquic.wire.tensors import decode_tensor, encode_tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
import hf_to_gguf

TOKENS = np.array([1, 17, 250, 3, 88, 42, 0, 61, 9, 299, 70, 2], dtype=np.int64)
PREFILL = 9  # the rest is decoded one token at a time
LAYERS = 3
SPLITS = {"whole": [(0, 2)], "split": [(0, 0), (1, 2)]}
CONTEXT = 64  # what the engines serve (past phi3's original context of 32: long factors)
ENGINES: dict[str, Callable[[int], MLXEngine | TinygradEngine]] = {
    "mlx": lambda context: MLXEngine(max_context=context),
    "tinygrad": lambda context: TinygradEngine(max_context=context),
}

Loader = Callable[[Shard], ShardWeights]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def model_dir(family: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(family, tmp_path_factory.mktemp(f"tiny-{family}"))


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> np.ndarray:
    """mlx-lm's logits at the positions exoquic samples from: `(T - PREFILL + 1, vocab)`."""
    return mlx_lm_logits(model_dir, TOKENS)[PREFILL - 1 :]


def run(
    engine: str, loader: Loader, split: str, layers: int = LAYERS, context: int = CONTEXT
) -> np.ndarray:
    """exoquic's logits at the sampled positions, the layers split as `SPLITS[split]`."""
    engines = []
    for start, end in SPLITS[split]:
        e = ENGINES[engine](context)
        e.load(loader(Shard("tiny", start, min(end, layers - 1), layers)))
        engines.append(e)
    steps = [TOKENS[:PREFILL], *(TOKENS[i : i + 1] for i in range(PREFILL, len(TOKENS)))]
    logits = []
    for step in steps:
        x: np.ndarray = step
        for e in engines:
            x = e.forward("r", x)
        logits.append(x)
    return np.stack(logits)


def assert_close(got: np.ndarray, want: np.ndarray, tolerance: float) -> None:
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, atol=tolerance * scale, rtol=0)


@pytest.mark.parametrize("split", sorted(SPLITS))
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_safetensors_logits_match_mlx_lm(
    model_dir: Path, reference: np.ndarray, engine: str, split: str
) -> None:
    got = run(engine, lambda shard: load_hf_shard(model_dir, shard), split)
    assert_close(got, reference, 1e-4)
    # A wrong token would change every later position: the argmaxes must agree too.
    assert np.array_equal(got.argmax(-1), reference.argmax(-1))


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_gguf_copy_gives_the_safetensors_logits(
    model_dir: Path, tmp_path: Path, engine: str
) -> None:
    gguf_path = tmp_path / "model.gguf"
    hf_to_gguf.convert(model_dir, gguf_path)
    from_gguf = run(engine, lambda shard: load_gguf_shard(gguf_path, shard), "split")
    from_hf = run(engine, lambda shard: load_hf_shard(model_dir, shard), "split")
    assert_close(from_gguf, from_hf, 1e-5)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_q8_0_gguf_runs_on_the_block_kernels(
    model_dir: Path, reference: np.ndarray, tmp_path: Path, engine: str
) -> None:
    gguf_path = tmp_path / "model-q8_0.gguf"
    hf_to_gguf.convert(model_dir, gguf_path, "q8_0")
    from_gguf = run(engine, lambda shard: load_gguf_shard(gguf_path, shard), "split")
    quantized = run(engine, lambda shard: load_hf_shard(model_dir, shard, "q8_0"), "whole")
    assert_close(from_gguf, quantized, 1e-4)
    assert_close(from_gguf, reference, 5e-2)


# qwen3 with q/k/v biases too (Qwen3's config allows it): every feature in one model,
# with rows of 256 values so that the K-quants apply.
BLOCK_MODEL = FAMILIES["qwen3"] | {
    "hidden_size": 256,
    "intermediate_size": 512,
    "head_dim": 64,
    "num_hidden_layers": 2,
    "attention_bias": True,
}


def _shape(name: str, c: ModelConfig) -> tuple[int, ...]:
    d, f, hd = c.hidden_size, c.intermediate_size, c.head_dim
    q, kv = c.num_heads * hd, c.num_kv_heads * hd
    shapes = {
        "embed_tokens.weight": (c.vocab_size, d),
        "lm_head.weight": (c.vocab_size, d),
        "q_proj.weight": (q, d),
        "k_proj.weight": (kv, d),
        "v_proj.weight": (kv, d),
        "o_proj.weight": (d, q),
        "gate_proj.weight": (f, d),
        "up_proj.weight": (f, d),
        "down_proj.weight": (d, f),
        "q_proj.bias": (q,),
        "k_proj.bias": (kv,),
        "v_proj.bias": (kv,),
        "q_norm.weight": (hd,),
        "k_norm.weight": (hd,),
        "layernorm.weight": (d,),
        "model.norm.weight": (d,),
    }
    return next(shape for suffix, shape in shapes.items() if name.endswith(suffix))


def test_every_block_kind_runs_under_the_new_features() -> None:
    """qwen2's biases and qwen3's q/k norms around the block kernels of every GGML kind.

    The model's matrices cycle through all kinds: tinygrad computes on the blocks
    (int16 activations: 1e-3 of the largest logit, as for llama), MLX runs their
    exact float32 values.
    """
    config = ModelConfig.from_hf_dict(BLOCK_MODEL)
    shard = Shard.whole("blocks", config.num_layers)
    rng = np.random.default_rng(0)
    tensors: dict[str, WeightArray] = {}
    matrices = 0
    for name in shard_tensor_names(shard, config):
        shape = _shape(name, config)
        if len(shape) == 2:
            kind = ALL_KINDS[matrices % len(ALL_KINDS)]
            tensors[name] = random_blocks(kind, *shape, seed=matrices, scale=shape[1] ** -0.5)
            matrices += 1
        elif name.endswith("norm.weight"):
            tensors[name] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            tensors[name] = rng.normal(0.0, 0.2, shape).astype(np.float32)
    assert matrices >= len(ALL_KINDS)
    quantized = ShardWeights(config, shard, tensors)
    dense = ShardWeights(config, shard, {n: quantized.dense(n) for n in tensors})
    got = run("tinygrad", lambda _: quantized, "whole", config.num_layers)
    want = run("mlx", lambda _: dense, "whole", config.num_layers)
    assert_close(got, want, 1e-3)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_phi3_within_its_original_context_rotates_with_the_short_factors(
    tmp_path: Path, engine: str
) -> None:
    """An engine serving at most original_max_position_embeddings (32) positions uses the
    short factors, which Hugging Face uses for every sequence that short; mlx-lm always
    takes the long ones, so it is handed the short ones in their place."""
    model_dir = write_tiny_model("phi3", tmp_path / "phi3")
    original = FAMILIES["phi3"]["original_max_position_embeddings"]
    want = mlx_lm_logits(model_dir, TOKENS, rope_factors="short")[PREFILL - 1 :]
    got = run(engine, lambda shard: load_hf_shard(model_dir, shard), "split", context=original)
    assert_close(got, want, 1e-4)
    long = mlx_lm_logits(model_dir, TOKENS)[PREFILL - 1 :]
    assert np.abs(want - long).max() > 1e-2 * np.abs(want).max()  # the sets differ


@pytest.mark.parametrize("family_name", ["phi3", "gemma2"])
def test_tinygrad_generated_kernels_run_the_new_features(tmp_path: Path, family_name: str) -> None:
    """tinygrad's own kernels (fast=False: no C attention) implement the soft-caps, the
    sliding window, the norm offset and longrope's attention factor too."""
    model_dir = write_tiny_model(family_name, tmp_path / family_name)
    want = mlx_lm_logits(model_dir, TOKENS)[PREFILL - 1 :]
    engine = TinygradEngine(max_context=CONTEXT, fast=False)
    engine.load(load_hf_shard(model_dir, Shard("tiny", 0, LAYERS - 1, LAYERS)))
    steps = [TOKENS[:PREFILL], *(TOKENS[i : i + 1] for i in range(PREFILL, len(TOKENS)))]
    got = np.stack([engine.forward("r", step) for step in steps])
    assert_close(got, want, 1e-4)


@pytest.mark.parametrize("family_name", ["phi3", "gemma2"])
def test_a_ring_of_mlx_then_tinygrad_matches_mlx_lm(tmp_path: Path, family_name: str) -> None:
    """MLX runs layer 0 and hands its hidden states through the wire's tensor encoding
    to tinygrad for layers 1-2, as two nodes of a mixed ring do."""
    model_dir = write_tiny_model(family_name, tmp_path / family_name)
    want = mlx_lm_logits(model_dir, TOKENS)[PREFILL - 1 :]
    first, rest = ENGINES["mlx"](CONTEXT), ENGINES["tinygrad"](CONTEXT)
    first.load(load_hf_shard(model_dir, Shard("tiny", 0, 0, LAYERS)))
    rest.load(load_hf_shard(model_dir, Shard("tiny", 1, LAYERS - 1, LAYERS)))
    steps = [TOKENS[:PREFILL], *(TOKENS[i : i + 1] for i in range(PREFILL, len(TOKENS)))]
    got = []
    for step in steps:
        hidden = decode_tensor(encode_tensor(first.forward("r", step)))
        got.append(rest.forward("r", hidden))
    assert_close(np.stack(got), want, 1e-4)


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_all_logits_score_every_prompt_position_like_mlx_lm(model_dir: Path, engine: str) -> None:
    """Scoring a prompt (`echo` with logprobs) takes every position's logits, each
    family's head included (gemma2's soft-capping), split at a layer boundary."""
    x: np.ndarray = TOKENS[:PREFILL].astype(np.int32)
    for start, end in SPLITS["split"]:
        e = ENGINES[engine](CONTEXT)
        e.load(load_hf_shard(model_dir, Shard("tiny", start, end, LAYERS)))
        x = e.forward_batch([ForwardItem("r", x, all_logits=True)])[0]
    want = mlx_lm_logits(model_dir, TOKENS[:PREFILL])
    assert x.shape == want.shape
    assert_close(x, want, 1e-4)
