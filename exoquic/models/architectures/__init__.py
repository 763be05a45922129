"""The model families exoquic runs, looked up by name, `model_type` or GGUF arch.

Adding a family: see docs/architectures.md.
"""

from __future__ import annotations

from typing import Any

from exoquic.models.architectures import gemma2, llama, phi3, qwen2, qwen3
from exoquic.models.architectures.base import (
    GGUF_LAYER_NAMES,
    Architecture,
    UnsupportedArchitectureError,
)

__all__ = [
    "ARCHITECTURES",
    "GGUF_LAYER_NAMES",
    "Architecture",
    "UnsupportedArchitectureError",
    "by_name",
    "for_gguf_arch",
    "for_hf_model_type",
]

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a for a in (llama.ARCH, qwen2.ARCH, qwen3.ARCH, phi3.ARCH, gemma2.ARCH)
}


def by_name(name: str) -> Architecture:
    """The family a `ModelConfig.architecture` names."""
    if name not in ARCHITECTURES:
        raise UnsupportedArchitectureError(
            f"unsupported architecture {name!r} (supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    return ARCHITECTURES[name]


def for_hf_model_type(model_type: str) -> Architecture:
    """The family of a Hugging Face `config.json` `model_type`."""
    for arch in ARCHITECTURES.values():
        if model_type in arch.hf_model_types:
            return arch
    known = sorted(t for a in ARCHITECTURES.values() for t in a.hf_model_types)
    raise UnsupportedArchitectureError(
        f"unsupported model_type {model_type!r} (supported: {', '.join(known)})"
    )


def for_gguf_arch(gguf_arch: str) -> Architecture:
    """The family of a GGUF `general.architecture`."""
    for arch in ARCHITECTURES.values():
        if arch.gguf_arch == gguf_arch:
            return arch
    known = sorted(a.gguf_arch for a in ARCHITECTURES.values())
    raise UnsupportedArchitectureError(
        f"unsupported architecture {gguf_arch!r} (supported: {', '.join(known)})"
    )


def refuse_experts(expert_count: Any) -> None:
    """Mixture-of-experts checkpoints (Mixtral, which GGUF files as `llama`, or a
    dense family's config with experts) are refused rather than run as dense."""
    if expert_count and int(expert_count) > 0:
        raise UnsupportedArchitectureError(
            f"mixture-of-experts models ({expert_count} experts) are not supported yet"
        )
