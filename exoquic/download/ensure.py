"""Making a node's model available locally: bundled, on disk, or from the hub.

Bundled models and local paths resolve directly. Models that live on the
Hugging Face hub (registry entries without bundled weights, `org/name` repo
ids, or `org/name/FILE.gguf` for one GGUF file) are fetched in two steps: the
small files (config, tokenizer; a GGUF's header) before the node joins, so it
can read the model's shape; then, once a plan gives the node its layers, only
the files that hold them (for a GGUF, only their byte ranges).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from exoquic.download.progress import ProgressCallback, current_reporter
from exoquic.models.hf_loader import DEFAULT_HF_WEIGHTS, as_hf_weights
from exoquic.models.registry import find_model
from exoquic.models.shard import Shard
from exoquic.models.source import ModelSource, resolve_source
from exoquic.models.weights import ShardWeights


@dataclass(frozen=True)
class NodeModel:
    source: ModelSource  # config and tokenizer are readable now
    load_shard: Callable[[Shard], ShardWeights]  # blocking; fetches the shard's files first


def hub_repo_for(model: str) -> str | None:
    """The hub repository a `--model` value needs downloading from, or None if it is local."""
    entry = find_model(model)
    if entry is not None:
        return None if entry.bundled_package else entry.hf_repo
    if Path(model).expanduser().exists():
        return None
    return model if model.count("/") == 1 else None


def hub_gguf_for(model: str) -> tuple[str, str] | None:
    """(repo, file) of the hub GGUF a `--model` names: `owner/repo/FILE.gguf` not on
    disk, or a registry entry that names a GGUF (what `exoquic pull` fetches for it)."""
    entry = find_model(model)
    if entry is not None:
        if entry.bundled_package or not (entry.gguf_repo and entry.gguf_file):
            return None
        return entry.gguf_repo, entry.gguf_file
    parts = model.split("/")
    if len(parts) < 3 or not model.endswith(".gguf") or Path(model).expanduser().exists():
        return None
    return "/".join(parts[:2]), "/".join(parts[2:])


async def prepare_model(
    model: str, progress: ProgressCallback | None = None, weights: str = DEFAULT_HF_WEIGHTS
) -> NodeModel:
    """Resolve `model`; for a hub model, fetch its config and tokenizer now.

    `load_shard` reports its download to `progress` (e.g. a `DownloadProgress`),
    or else to the callback of the `reporting_to` block it is called in.
    """
    gguf = hub_gguf_for(model)
    if gguf is not None:
        entry = find_model(model)
        return await _prepare_gguf(entry.id if entry else model, *gguf, progress)
    repo = hub_repo_for(model)
    if repo is None:
        source = resolve_source(model, as_hf_weights(weights))
        return NodeModel(source, source.load_shard)
    # Imported here: huggingface_hub takes ~1 s to import, which a local model never needs.
    from exoquic.download.hub import download_metadata, download_shard

    snapshot = await trio.to_thread.run_sync(download_metadata, repo)
    entry = find_model(model)
    hub_source = ModelSource(entry.id if entry else repo, "hf", snapshot, as_hf_weights(weights))

    def load_shard(shard: Shard) -> ShardWeights:
        reporter = progress if progress is not None else current_reporter()
        download_shard(repo, shard, progress=reporter)
        return hub_source.load_shard(shard)

    return NodeModel(hub_source, load_shard)


async def _prepare_gguf(
    model: str, repo: str, filename: str, progress: ProgressCallback | None
) -> NodeModel:
    """A hub GGUF: its header now (as a GGUF without layers), then only the byte
    ranges of the layers a plan gives this node."""
    from exoquic.download.gguf import download_gguf, download_gguf_metadata

    metadata = await trio.to_thread.run_sync(download_gguf_metadata, repo, filename)
    source = ModelSource(model, "gguf", metadata)

    def load_shard(shard: Shard) -> ShardWeights:
        reporter = progress if progress is not None else current_reporter()
        layers = (shard.start_layer, shard.end_layer)
        path = download_gguf(repo, filename, layers=layers, progress=reporter)
        return ModelSource(model, "gguf", path).load_shard(shard)

    return NodeModel(source, load_shard)
