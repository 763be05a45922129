"""Does a model fit before anything is downloaded or loaded? (pure)

A model needs its weights (every layer, the embedding, and an untied output
head) plus a KV cache of `max_context` tokens in every layer. The devices
offer `memory_fraction` of their usable memory (what `partition` lets weights
take; the rest stays for activations and the operating system). The answer
says by how much a model falls short, and what to do about it.

The check adds up memory over devices; a layer cannot be split, so a cluster
that passes it can still miss by part of a layer on each device (`partition`
has the last word when a plan is made).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from exoquic.topology.partition import DEFAULT_MEMORY_FRACTION

KV_BYTES_PER_VALUE = 4  # both engines keep keys and values in float32


@dataclass(frozen=True)
class ModelFootprint:
    """The memory a model takes, from its file's tensor table or the registry."""

    model_id: str
    layer_bytes: tuple[int, ...]  # each layer's weights
    embed_bytes: int  # token embedding (also the head when tied)
    head_bytes: int  # an untied output head; 0 when tied
    kv_bytes_per_token: int  # keys and values of one token, over all layers

    @classmethod
    def of(
        cls,
        model_id: str,
        layer_bytes: Sequence[int],
        embed_bytes: int,
        head_bytes: int,
        *,
        kv_heads: int,
        head_dim: int,
    ) -> ModelFootprint:
        kv = 2 * len(layer_bytes) * kv_heads * head_dim * KV_BYTES_PER_VALUE
        return cls(model_id, tuple(layer_bytes), embed_bytes, head_bytes, kv)

    def needed(self, max_context: int) -> int:
        weights = sum(self.layer_bytes) + self.embed_bytes + self.head_bytes
        return weights + self.kv_bytes_per_token * max_context


@dataclass(frozen=True)
class FitCheck:
    model_id: str
    needed: int
    available: int
    devices: int
    max_context: int
    kv_bytes: int  # the KV cache's part of `needed`

    @property
    def fits(self) -> bool:
        return self.needed <= self.available

    @property
    def shortfall(self) -> int:
        return max(0, self.needed - self.available)

    def message(self) -> str:
        """One line: how much it needs against what the devices offer, and what to do."""
        where = "this device offers" if self.devices == 1 else f"the {self.devices} devices offer"
        if self.fits:
            return (
                f"{self.model_id} fits: it needs {format_size(self.needed)} "
                f"(KV cache for {self.max_context} tokens: {format_size(self.kv_bytes)}) "
                f"of the {format_size(self.available)} {where}"
            )
        advice = "add a device or lower --max-context" if self.kv_bytes else "add a device"
        return (
            f"{self.model_id} does not fit: needs {format_size(self.shortfall)} more "
            f"({format_size(self.needed)}, of which KV cache for {self.max_context} tokens "
            f"{format_size(self.kv_bytes)}, against the {format_size(self.available)} "
            f"{where}); {advice}"
        )


def check_fit(
    model: ModelFootprint,
    max_context: int,
    usable_memory: Sequence[int],
    memory_fraction: float = DEFAULT_MEMORY_FRACTION,
) -> FitCheck:
    """Whether devices with `usable_memory` bytes each can hold `model` at `max_context`."""
    if max_context < 1:
        raise ValueError(f"max_context must be at least 1, got {max_context}")
    if not 0 < memory_fraction <= 1:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    available = sum(int(m * memory_fraction) for m in usable_memory)
    return FitCheck(
        model.model_id,
        model.needed(max_context),
        available,
        len(usable_memory),
        max_context,
        model.kv_bytes_per_token * max_context,
    )


def format_size(n: int) -> str:
    """Bytes in GB / MB with one decimal (decimal units, as disks and the hub count)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
