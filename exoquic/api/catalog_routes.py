"""`GET /v1/exoquic/models`: every model this node could serve or pull, for the
UI's picker (the rows are `exoquic.api.catalog`'s; this route gathers the facts).

`/v1/models` keeps OpenAI's shape and lists what the cluster serves; this one
adds the registry, the cache, sizes and the fit check, which OpenAI has no
field for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
from quart import Blueprint

from exoquic.api.catalog import ClusterMemory, catalog_rows
from exoquic.api.openai_routes import model_set, node
from exoquic.api.pulls import current_pulls
from exoquic.models.registry import ModelEntry, list_models

blueprint = Blueprint("catalog", __name__)


@blueprint.get("/v1/exoquic/models")
async def catalog() -> dict[str, Any]:
    serving = node()
    state = serving.cluster.plans.state
    memory = ClusterMemory(
        usable=[m.capabilities.usable_memory for m in state.members()],
        memory_fraction=state.memory_fraction,
        max_context=serving.max_context,
    )
    entries = list_models()
    # Scanning the cache reads the disk: off the event loop.
    loaded = {report["model_id"] for report in model_set().loaded()}
    rows = await trio.to_thread.run_sync(_rows, entries, loaded, memory)
    pulling = {job.target.entry.id for job in current_pulls().running() if job.target.entry}
    for row in rows:
        row["pulling"] = row["id"] in pulling
    return {
        "object": "list",
        "data": rows,
        "max_context": memory.max_context,
        "available": sum(int(m * memory.memory_fraction) for m in memory.usable),
        "devices": len(memory.usable),
    }


def _rows(
    entries: list[ModelEntry], loaded: set[str], memory: ClusterMemory
) -> list[dict[str, Any]]:
    from exoquic.download.cache import cached_models, default_cache_dir

    cache_dir = default_cache_dir()
    ggufs = {e.id for e in entries if _gguf_cached(e, cache_dir)}
    return catalog_rows(entries, cached_models(cache_dir), ggufs, loaded, memory)


def _gguf_cached(entry: ModelEntry, cache_dir: Path) -> bool:
    from exoquic.download.errors import ModelNotCachedError
    from exoquic.download.gguf import cached_gguf

    if not (entry.gguf_repo and entry.gguf_file):
        return False
    try:
        cached_gguf(entry.gguf_repo, entry.gguf_file, cache_dir)
    except ModelNotCachedError:
        return False
    return True
