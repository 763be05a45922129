"""mlx-lm as the independent reference for whole-model logits.

mlx-lm implements each Hugging Face architecture in its own file and loads the
checkpoint directory itself, so it shares no code with exoquic's loaders or
engines. Two gaps are bridged here, each in plain sight:

- mlx-lm's gemma2 runs every layer with the plain causal mask. Its own layers
  are run here one by one with Hugging Face's mask per layer instead (even
  layers see only the last `sliding_window` positions);
- mlx-lm's phi3 always rotates with the long rope factors. `rope_factors="short"`
  hands it the short ones in their place (what a model served within its
  original context uses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import mlx.core as mx
import numpy as np
from mlx_lm.models.base import create_causal_mask
from mlx_lm.utils import load_config, load_model


def mlx_lm_logits(
    directory: Path, tokens: np.ndarray, rope_factors: Literal["long", "short"] = "long"
) -> np.ndarray:
    """float32 logits `(T, vocab)` of every position of `tokens`, computed by mlx-lm."""
    config = load_config(directory)
    overrides: dict[str, Any] = {}
    if rope_factors == "short":
        scaling = dict(config["rope_scaling"])
        overrides["rope_scaling"] = {**scaling, "long_factor": scaling["short_factor"]}
    model, _ = load_model(directory, model_config=overrides)
    inputs = mx.array(np.asarray(tokens, dtype=np.int32)[None])
    if config["model_type"] == "gemma2":
        logits = _gemma2_with_sliding_window(model, config, inputs)
    else:
        logits = model(inputs)
    return np.array(logits[0].astype(mx.float32))


def _gemma2_with_sliding_window(model: Any, config: dict[str, Any], inputs: mx.array) -> mx.array:
    """mlx-lm's gemma2 forward pass, with the sliding-window mask on sliding layers."""
    inner = model.model
    T = inputs.shape[1]
    h = inner.embed_tokens(inputs) * (config["hidden_size"] ** 0.5)
    for i, layer in enumerate(inner.layers):
        window = config["sliding_window"] if _is_sliding(config, i) else None
        h = layer(h, create_causal_mask(T, window_size=window), None)
    out = inner.embed_tokens.as_linear(inner.norm(h))
    cap = config["final_logit_softcapping"]
    return mx.tanh(out / cap) * cap


def _is_sliding(config: dict[str, Any], layer: int) -> bool:
    # transformers' Gemma2Config: layer_types, else even layers slide.
    types = config.get("layer_types")
    if types:
        return bool(types[layer] == "sliding_attention")
    return layer % 2 == 0
