"""The models the UI's picker offers: the registry's and whatever else is cached,
each with its size, whether it is on disk, and whether it fits the cluster (pure).

The fit is `topology.fit`'s check, the one `exoquic pull` prints, against the
memory the cluster's live devices offer the plan (their `usable_memory`, as
each reported it on joining), at the node's context length: whether the
cluster can hold the model at all, not whether it fits beside those loaded.
The route (`catalog_routes`) gathers those facts; this module
only turns them into JSON-ready rows, so tests need neither a cache nor a ring.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from exoquic.download.cache import CachedModel
from exoquic.models.registry import ModelEntry
from exoquic.topology.fit import FitCheck, ModelFootprint, check_fit


@dataclass(frozen=True)
class ClusterMemory:
    """What the fit check is made against."""

    usable: Sequence[int]  # each live device's usable memory, in bytes
    memory_fraction: float  # the share of it weights may take
    max_context: int  # tokens of KV cache a loaded model needs room for


def footprint_of_entry(entry: ModelEntry) -> ModelFootprint:
    """A registry model's memory from the registry's sizes (its GGUF's, as loaded)."""
    layers = [entry.layer_size(i) for i in range(entry.num_layers)]
    head = 0 if entry.tie_word_embeddings else entry.head_bytes
    return ModelFootprint.of(
        entry.id, layers, entry.embed_bytes, head, kv_heads=entry.kv_heads, head_dim=entry.head_dim
    )


def fit_of(entry: ModelEntry, memory: ClusterMemory) -> FitCheck | None:
    """The check for `entry`; None when no device is known (nothing to check against)."""
    if not memory.usable:
        return None
    return check_fit(
        footprint_of_entry(entry), memory.max_context, memory.usable, memory.memory_fraction
    )


def is_cached(entry: ModelEntry, cached: Collection[str], cached_gguf: bool) -> bool:
    """Whether a node could load `entry` without a download: it ships with exoquic,
    its registry GGUF is cached whole (`cached_gguf`), or its safetensors repo is."""
    return bool(entry.bundled_package) or cached_gguf or entry.hf_repo in cached


def registry_row(
    entry: ModelEntry,
    *,
    cached: bool,
    cached_bytes: int,
    loaded: bool,
    memory: ClusterMemory,
) -> dict[str, Any]:
    """One registry model: `id` is what a request names, `name` its Ollama-style name
    (what `POST /api/pull` and `exoquic pull` take), `size` the bytes it takes loaded."""
    fit = fit_of(entry, memory)
    return {
        "id": entry.id,
        "name": entry.ollama[0] if entry.ollama else entry.id,
        "display_name": entry.display_name,
        "architecture": entry.architecture,
        "layers": entry.num_layers,
        "size": entry.total_bytes,
        "source": "registry",
        "bundled": bool(entry.bundled_package),
        "cached": cached,
        "cached_bytes": cached_bytes,
        "loaded": loaded,
        **fit_fields(fit),
    }


def cached_row(model: CachedModel, loaded: bool) -> dict[str, Any]:
    """A cached repository the registry does not know (pulled as owner/repo): its
    size on disk; whether it fits is unknown without reading its files."""
    return {
        "id": model.repo_id,
        "name": model.repo_id,
        "display_name": model.repo_id,
        "architecture": None,
        "layers": None,
        "size": model.size_on_disk,
        "source": "cache",
        "bundled": False,
        "cached": True,
        "cached_bytes": model.size_on_disk,
        "loaded": loaded,
        **fit_fields(None),
    }


def fit_fields(fit: FitCheck | None) -> dict[str, Any]:
    """`fits` is None when unknown; `needed` and `available` are bytes."""
    if fit is None:
        return {"fits": None, "needed": None, "available": None, "fit": None}
    return {
        "fits": fit.fits,
        "needed": fit.needed,
        "available": fit.available,
        "fit": fit.message(),
    }


def catalog_rows(
    entries: Sequence[ModelEntry],
    cached: Sequence[CachedModel],
    cached_ggufs: Collection[str],
    loaded: Collection[str],
    memory: ClusterMemory,
) -> list[dict[str, Any]]:
    """Registry models in registry order, then the other cached repositories by name.

    `cached_ggufs`: ids of the entries whose registry GGUF is in the cache;
    `loaded`: ids (or repo ids) of the models the cluster holds now.
    """
    on_disk = {m.repo_id: m for m in cached}
    rows = []
    for entry in entries:
        repos = dict.fromkeys(r for r in (entry.gguf_repo, entry.hf_repo) if r)
        held = {r: on_disk.pop(r) for r in repos if r in on_disk}
        rows.append(
            registry_row(
                entry,
                cached=is_cached(entry, held, entry.id in cached_ggufs),
                cached_bytes=sum(m.size_on_disk for m in held.values()),
                loaded=entry.id in loaded,
                memory=memory,
            )
        )
    rows += [cached_row(m, m.repo_id in loaded) for _, m in sorted(on_disk.items())]
    return rows
