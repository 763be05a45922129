"""Making a node's shard of a model available locally before it loads.

Bundled models and local paths resolve directly. Models that live on the
Hugging Face hub (registry entries without bundled weights, or `org/name` repo
ids) are fetched first, only the files that hold the node's layers, into the
download cache; from then on they load like any Hugging Face directory.
"""

from __future__ import annotations

from pathlib import Path

from exoquic.download.hub import download_shard_async
from exoquic.download.progress import DownloadProgress
from exoquic.models.registry import find_model
from exoquic.models.shard import Shard
from exoquic.models.source import ModelSource, resolve_source


def hub_repo_for(model: str) -> str | None:
    """The hub repository a `--model` value needs downloading from, or None if it is local."""
    entry = find_model(model)
    if entry is not None:
        return None if entry.bundled_package else entry.hf_repo
    if Path(model).expanduser().exists():
        return None
    return model if model.count("/") == 1 else None


async def ensure_source(
    model: str, shard: Shard, progress: DownloadProgress | None = None
) -> ModelSource:
    """A source holding at least `shard`'s weights, downloading them if needed."""
    repo = hub_repo_for(model)
    if repo is None:
        return resolve_source(model)
    snapshot = await download_shard_async(repo, shard, progress=progress)
    entry = find_model(model)
    return ModelSource(entry.id if entry else repo, "hf", snapshot)
