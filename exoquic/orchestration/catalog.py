"""The models this node can load on demand: the bundled ones and those in the cache.

A request names a model the way `exoquic pull` does (`smollm2:135m`,
`owner/repo:Q4_K_M`, `owner/repo/FILE.gguf`, `owner/repo`); `Catalog.find`
resolves the name against what is on this machine, without any network, and
`Catalog.entries` lists everything that can be served. Only complete models
count: a whole GGUF file (not the layer slices a ring node downloads), or a
safetensors snapshot holding every weight file. Local paths are never
resolved from a request: a client must not make the node open files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from exoquic.download.cache import RepoCache, default_cache_dir
from exoquic.download.errors import DownloadError
from exoquic.download.pull import choose_file, footprint_of_gguf, parse_name
from exoquic.models.errors import ModelError
from exoquic.models.gguf_file import GGUFFile
from exoquic.models.registry import ModelEntry, bundled_gguf_path, find_model, list_models
from exoquic.models.source import ModelSource, SourceKind
from exoquic.topology.fit import KV_BYTES_PER_VALUE, ModelFootprint

log = logging.getLogger(__name__)

REVISION = "main"  # the revision `exoquic pull` fetches by default


@dataclass(frozen=True)
class CatalogEntry:
    """A complete model on this machine, and the id requests and listings use."""

    model_id: str
    kind: SourceKind
    path: Path  # the GGUF file, or the safetensors snapshot directory

    def source(self) -> ModelSource:
        return ModelSource(self.model_id, self.kind, self.path)


class Catalog:
    """Cached and bundled models (see the module docstring)."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        self._cache_dir = cache_dir
        self._described: dict[tuple[Path, float], tuple[ModelFootprint, int]] = {}

    @property
    def cache_dir(self) -> Path:
        return self._cache_dir if self._cache_dir is not None else default_cache_dir()

    def find(self, name: str) -> CatalogEntry | None:
        """The cached model `name` means (an `exoquic pull` name), or None."""
        name = name.strip().removesuffix(":latest")
        entry = find_model(name)
        if entry is not None:
            return self._registry_entry(entry)
        try:
            target = parse_name(name)
        except DownloadError:
            return None
        files = self._snapshot_files(target.repo_id)
        if not files:
            return None
        try:
            target = choose_file(target, files)
        except DownloadError:
            return None
        return self._entry(target.repo_id, target.filename)

    def entries(self) -> list[CatalogEntry]:
        """Every model that can be served: the bundled ones, then the cache's."""
        found: dict[str, CatalogEntry] = {}
        for entry in list_models():
            if entry.bundled_package and (servable := self._registry_entry(entry)):
                found.setdefault(servable.model_id, servable)
        for folder in sorted(self.cache_dir.glob("models--*")):
            repo_id = folder.name.removeprefix("models--").replace("--", "/")
            for servable in self._repo_entries(repo_id):
                found.setdefault(servable.model_id, servable)
        return list(found.values())

    def footprint(self, entry: CatalogEntry) -> ModelFootprint:
        """The memory the model takes, from its GGUF header or its config (cached)."""
        return self._describe(entry)[0]

    def context_length(self, entry: CatalogEntry) -> int:
        """The longest context the model was trained for (its config's)."""
        return self._describe(entry)[1]

    def _describe(self, entry: CatalogEntry) -> tuple[ModelFootprint, int]:
        key = (entry.path, entry.path.stat().st_mtime)
        if key not in self._described:
            self._described[key] = _describe(entry)
        return self._described[key]

    # --- resolving -----------------------------------------------------------

    def _registry_entry(self, entry: ModelEntry) -> CatalogEntry | None:
        if entry.bundled_package:
            try:
                return CatalogEntry(entry.id, "gguf", bundled_gguf_path(entry.id))
            except ModelError:
                return None  # its package is not installed
        if entry.gguf_repo and entry.gguf_file:
            found = self._entry(entry.gguf_repo, entry.gguf_file, entry.id)
            if found is not None:
                return found
        return self._entry(entry.hf_repo, None, entry.id)

    def _repo_entries(self, repo_id: str) -> list[CatalogEntry]:
        files = self._snapshot_files(repo_id)
        ggufs = [f for f in files if f.endswith(".gguf")]
        entries = [self._entry(repo_id, f) for f in ggufs]
        if "config.json" in files:
            entries.append(self._entry(repo_id, None))
        return [e for e in entries if e is not None]

    def _entry(
        self, repo_id: str, filename: str | None, model_id: str | None = None
    ) -> CatalogEntry | None:
        """The cached whole GGUF `filename` of `repo_id`, or (None) its complete
        safetensors snapshot; None when it is not all there."""
        snapshot = self._snapshot(repo_id)
        if snapshot is None:
            return None
        if filename is not None:
            path = snapshot / filename
            if not path.is_file():
                return None
            return CatalogEntry(model_id or gguf_model_id(repo_id, filename), "gguf", path)
        if not _complete_safetensors(repo_id, snapshot, self.cache_dir):
            return None
        return CatalogEntry(model_id or _hf_id(repo_id), "hf", snapshot)

    def _snapshot(self, repo_id: str) -> Path | None:
        cache = RepoCache(self.cache_dir, repo_id)
        commit = cache.resolve(REVISION)
        if commit is None:
            return None
        snapshot = cache.snapshot(commit)
        return snapshot if snapshot.is_dir() else None

    def _snapshot_files(self, repo_id: str) -> list[str]:
        """The files of the repository's cached snapshot (those whose blob is there)."""
        snapshot = self._snapshot(repo_id)
        if snapshot is None:
            return []
        return sorted(str(p.relative_to(snapshot)) for p in snapshot.rglob("*") if p.is_file())


def gguf_model_id(repo_id: str, filename: str) -> str:
    """A registry id when the registry names this file, else `owner/repo/FILE.gguf`."""
    for entry in list_models():
        if entry.gguf_repo == repo_id and entry.gguf_file == filename:
            return entry.id
    return f"{repo_id}/{filename}"


def _hf_id(repo_id: str) -> str:
    for entry in list_models():
        if entry.hf_repo == repo_id:
            return entry.id
    return repo_id


def _complete_safetensors(repo_id: str, snapshot: Path, cache_dir: Path) -> bool:
    """Whether the cached snapshot holds every weight file the model needs."""
    from exoquic.download.hub import cached_shard
    from exoquic.models.hf_loader import read_hf_config
    from exoquic.models.shard import Shard

    if not (snapshot / "config.json").is_file():
        return False
    try:
        layers = read_hf_config(snapshot).num_layers
        cached_shard(repo_id, Shard.whole(repo_id, layers), cache_dir, revision=REVISION)
    except (ModelError, DownloadError, OSError, ValueError) as exc:
        log.debug("%s is not complete in the cache: %s", repo_id, exc)
        return False
    return True


def _describe(entry: CatalogEntry) -> tuple[ModelFootprint, int]:
    """The model's footprint and context length, reading its header once."""
    if entry.kind == "gguf":
        gf = GGUFFile.open_cached(entry.path)  # the served model's: parsed at its load
        arch = gf.metadata.get("general.architecture")
        context = int(gf.metadata.get(f"{arch}.context_length", 0)) or 2048
        return footprint_of_gguf(gf, entry.model_id), context
    source = entry.source()
    config = source.load_config()
    sizes = source.part_sizes(config)  # matrices as they load (the default --weights)
    footprint = ModelFootprint(
        entry.model_id,
        (sizes.bytes_per_layer,) * config.num_layers,
        sizes.embed_bytes,
        sizes.head_bytes,
        2 * config.num_layers * config.num_kv_heads * config.head_dim * KV_BYTES_PER_VALUE,
    )
    return footprint, config.max_context
