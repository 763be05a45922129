"""Model hyper-parameters, read from GGUF metadata or a Hugging Face config.json."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from exoquic.models import architectures
from exoquic.models.longrope import LongRopeScaling, longrope_from_hf

# Hugging Face `rope_type` values that mean "no scaling".
_NO_SCALING = frozenset({"default", "none"})
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "longrope")
_LONGROPE = frozenset({"longrope", "su"})  # "su" is longrope's earlier name (Phi-3 mini)


class UnsupportedRopeScalingError(ValueError):
    """A model asks for a RoPE scaling type the engines do not implement.

    Running it with plain RoPE would give subtly wrong output, so it is refused.
    """


@dataclass(frozen=True)
class LinearRopeScaling:
    """Positions divided by `factor` (Hugging Face and GGUF type "linear")."""

    factor: float


@dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama 3.1 / 3.2 frequency scaling (Hugging Face `rope_type: "llama3"`).

    Frequencies whose wavelength is shorter than
    `original_max_position_embeddings / high_freq_factor` are kept, those longer
    than `original_max_position_embeddings / low_freq_factor` are divided by
    `factor`, and the band between is interpolated smoothly.
    """

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclass(frozen=True)
class RopeFrequencyFactors:
    """One divisor per rotary frequency, `head_dim / 2` of them.

    This is how GGUF files converted by llama.cpp carry Llama 3 scaling: a
    `rope_freqs.weight` tensor of precomputed divisors instead of the parameters.
    """

    factors: tuple[float, ...]


RopeScaling = LinearRopeScaling | Llama3RopeScaling | RopeFrequencyFactors | LongRopeScaling


@dataclass(frozen=True)
class ModelConfig:
    """The shape of a decoder-only transformer of one of `architectures.ARCHITECTURES`.

    Attribute names follow the Hugging Face `config.json` keys where one exists,
    so `from_hf_dict` stays a thin mapping. `rope_scaling` is None for plain RoPE.
    The fields after it are features some families turn on (set by the family's
    `Architecture.hf_features` / `gguf_features`); the engines build each
    layer from them, so a family is a set of features, not engine code.
    """

    architecture: str  # a family name: "llama", ...
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_context: int
    tie_word_embeddings: bool
    rope_scaling: RopeScaling | None = None
    attention_bias: bool = False  # q, k and v projections add a bias (qwen2)
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE (qwen3)
    # q, k, v as one `self_attn.qkv_proj` and gate, up as one `mlp.gate_up_proj` (phi3)
    fused_projections: bool = False
    # gemma2 from here on
    norm_weight_offset: float = 0.0  # every RMSNorm multiplies by (offset + weight)
    embedding_multiplier: float = 1.0  # token embeddings are scaled by this
    hidden_act: str = "silu"  # the gated MLP's activation: "silu" or "gelu_tanh"
    # norms on the attention and MLP outputs too (`post_attention_layernorm` then
    # normalises the attention output; `pre_feedforward_layernorm` the MLP input)
    sandwich_norms: bool = False
    query_pre_attn_scalar: float | None = None  # scores scale 1/sqrt(this), not 1/sqrt(head_dim)
    attn_logit_softcapping: float | None = None  # scores -> cap * tanh(scores / cap)
    final_logit_softcapping: float | None = None  # logits -> cap * tanh(logits / cap)
    sliding_window: int | None = None  # what the layers in `sliding_layers` attend over
    sliding_layers: tuple[int, ...] = ()  # global indices of the sliding-window layers

    def __post_init__(self) -> None:
        scaling = self.rope_scaling
        if isinstance(scaling, LongRopeScaling) and len(scaling.short_factor) != self.head_dim // 2:
            raise ValueError(
                f"longrope needs head_dim / 2 = {self.head_dim // 2} factors, "
                f"not {len(scaling.short_factor)}"
            )

    @property
    def attention_scale(self) -> float:
        """What q.k is multiplied by before the softmax (RoPE attention factors apart)."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def window_of(self, layer: int) -> int | None:
        """The positions layer `layer` (global index) attends over; None: all."""
        return self.sliding_window if layer in self.sliding_layers else None

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Build from a Hugging Face `config.json` mapping.

        Raises KeyError for a missing key, ValueError for an invalid value
        (UnsupportedRopeScalingError for an unknown `rope_scaling` type,
        UnsupportedArchitectureError for an unknown `model_type` or feature).
        """
        arch = architectures.for_hf_model_type(str(d.get("model_type", "llama")))
        architectures.refuse_experts(d.get("num_local_experts") or d.get("num_experts"))
        num_heads = int(d["num_attention_heads"])
        hidden = int(d["hidden_size"])
        # transformers 5 writes rope_theta and the scaling together as `rope_parameters`.
        rope_parameters: Mapping[str, Any] = d.get("rope_parameters") or {}
        if not isinstance(rope_parameters, Mapping):
            raise ValueError(f"rope_parameters must be an object, not {rope_parameters!r}")
        theta: Any = d.get("rope_theta") or rope_parameters.get("rope_theta") or 10000.0
        fields: dict[str, Any] = dict(
            architecture=arch.name,
            vocab_size=int(d["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(d["intermediate_size"]),
            num_layers=int(d["num_hidden_layers"]),
            num_heads=num_heads,
            num_kv_heads=int(d.get("num_key_value_heads", num_heads)),
            head_dim=int(d.get("head_dim") or hidden // num_heads),
            rope_theta=float(theta),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            max_context=int(d.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            rope_scaling=rope_scaling_from_hf(d.get("rope_scaling") or rope_parameters or None, d),
        )
        return cls(**(fields | arch.hf_features(d)))


def rope_scaling_from_hf(raw: Any, config: Mapping[str, Any] | None = None) -> RopeScaling | None:
    """The scaling a Hugging Face `rope_scaling` entry describes (None: plain RoPE).

    Older configs name the type `type`, newer ones `rope_type`. `config` is the
    whole config.json (longrope reads its context lengths there). Raises
    UnsupportedRopeScalingError naming any type other than
    default/linear/llama3/longrope (yarn, dynamic...), KeyError when a
    parameter is missing.
    """
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValueError(f"rope_scaling must be an object, not {raw!r}")
    rope_type = raw.get("rope_type", raw.get("type", "default"))
    if rope_type in _NO_SCALING:
        return None
    if rope_type == "linear":
        return LinearRopeScaling(_positive(raw["factor"], "rope_scaling factor"))
    if rope_type == "llama3":
        return _llama3_scaling(raw)
    if rope_type in _LONGROPE:
        return longrope_from_hf(raw, config or {})
    raise UnsupportedRopeScalingError(_unsupported(rope_type))


def _llama3_scaling(raw: Mapping[str, Any]) -> Llama3RopeScaling:
    scaling = Llama3RopeScaling(
        factor=_positive(raw["factor"], "rope_scaling factor"),
        low_freq_factor=_positive(raw["low_freq_factor"], "low_freq_factor"),
        high_freq_factor=_positive(raw["high_freq_factor"], "high_freq_factor"),
        original_max_position_embeddings=int(raw["original_max_position_embeddings"]),
    )
    # The interpolated band divides by (high - low); Llama 3 uses 1 and 4.
    if scaling.high_freq_factor <= scaling.low_freq_factor:
        raise ValueError(
            f"llama3 rope_scaling needs high_freq_factor > low_freq_factor, got {scaling}"
        )
    if scaling.original_max_position_embeddings <= 0:
        raise ValueError(f"llama3 rope_scaling needs a positive original context, got {scaling}")
    return scaling


def rope_scaling_from_gguf(
    metadata: Mapping[str, Any], arch: str, head_dim: int, freq_factors: np.ndarray | None
) -> RopeScaling | None:
    """The scaling a GGUF file describes (None: plain RoPE).

    `{arch}.rope.scaling.type` "linear" with `{arch}.rope.scaling.factor` is
    linear scaling; `freq_factors` is the file's `rope_freqs.weight` tensor if
    it has one (llama.cpp's form of Llama 3 scaling; combined with a linear
    factor the way llama.cpp combines them). Other types (yarn, longrope) raise
    UnsupportedRopeScalingError.
    """
    rope_type = metadata.get(f"{arch}.rope.scaling.type")
    factor = metadata.get(f"{arch}.rope.scaling.factor")
    if rope_type is None:
        # llama.cpp reads a bare factor as linear scaling.
        rope_type = "none" if factor is None else "linear"
    linear = 1.0
    if rope_type == "linear":
        linear = _positive(1.0 if factor is None else factor, f"{arch}.rope.scaling.factor")
    elif rope_type != "none":
        raise UnsupportedRopeScalingError(_unsupported(rope_type))
    if freq_factors is None:
        return None if linear == 1.0 else LinearRopeScaling(linear)
    factors = np.asarray(freq_factors, dtype=np.float64).reshape(-1)
    if factors.shape != (head_dim // 2,) or not np.all(factors > 0):
        wanted = head_dim // 2
        raise ValueError(f"rope_freqs.weight must hold {wanted} positive values, not {factors}")
    return RopeFrequencyFactors(tuple(float(f) for f in factors * linear))


def _positive(value: Any, what: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError(f"{what} must be positive, got {value!r}")
    return number


def _unsupported(rope_type: Any) -> str:
    return (
        f"unsupported RoPE scaling type {rope_type!r} "
        f"(supported: {', '.join(SUPPORTED_ROPE_TYPES)}); refusing to run it with plain RoPE"
    )
