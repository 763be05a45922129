"""The model cache on disk, in the Hugging Face hub cache layout.

```
<cache>/models--{org}--{name}/
    blobs/{etag}              file contents, named by sha256 (LFS) or git blob id
    blobs/{etag}.incomplete   a download in progress, resumed on the next try
    snapshots/{commit}/{file} relative symlinks to the blobs
    refs/{revision}           the commit a branch or tag pointed to when last seen
    .no_exist/{commit}/{file} marker: the repo has no such file at that commit
```

Keeping Hugging Face's layout means `huggingface_hub.scan_cache_dir` and the
`hf cache` command understand our cache, and a user may point
`EXOQUIC_HF_CACHE` at an existing `~/.cache/huggingface/hub` to reuse it.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from exoquic import paths
from exoquic.topology.fit import format_size

COMMIT = re.compile(r"^[0-9a-f]{40}$")
# huggingface_hub's `validate_repo_id`: an id is one folder name, never a path out of the cache.
_REPO_ID = re.compile(r"^(\b[\w\-.]+\b/)?\b[\w\-.]+\b$")


def repo_folder_name(repo_id: str) -> str:
    """A model repository's folder: huggingface_hub's `repo_folder_name`, written out
    because importing huggingface_hub costs a node start a few tenths of a second.

    Raises ValueError for an id huggingface_hub refuses (`..`, `--`, more than one `/`).
    """
    if not _REPO_ID.match(repo_id) or "--" in repo_id or ".." in repo_id:
        raise ValueError(f"invalid repository id {repo_id!r}")
    return "models--" + repo_id.replace("/", "--")


def default_cache_dir() -> Path:
    """`$EXOQUIC_HF_CACHE`, else `<exoquic home>/models/hub`."""
    override = os.environ.get("EXOQUIC_HF_CACHE")
    path = Path(override) if override else paths.models_dir() / "hub"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class RepoCache:
    """One repository's folder in the cache."""

    cache_dir: Path
    repo_id: str

    @property
    def root(self) -> Path:
        return self.cache_dir / repo_folder_name(self.repo_id)

    def blob(self, etag: str) -> Path:
        return self.root / "blobs" / etag

    def lock_path(self, etag: str) -> Path:
        # The lock huggingface_hub itself takes for this blob, so both tools agree.
        folder = repo_folder_name(self.repo_id)
        return self.cache_dir / ".locks" / folder / f"{etag}.lock"

    def snapshot(self, commit: str) -> Path:
        return self.root / "snapshots" / commit

    def resolve(self, revision: str) -> str | None:
        """The commit `revision` names: itself if a commit hash, else the stored ref."""
        if COMMIT.match(revision):
            return revision
        ref = self.root / "refs" / revision
        return ref.read_text().strip() if ref.is_file() else None

    def write_ref(self, revision: str, commit: str) -> None:
        if revision == commit:
            return
        ref = self.root / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(ref.name + ".tmp")
        tmp.write_text(commit)
        tmp.replace(ref)

    def link(self, commit: str, filename: str, blob: Path) -> Path:
        """Publish `blob` as `filename` in the commit's snapshot (a relative symlink)."""
        pointer = self.snapshot(commit) / filename
        pointer.parent.mkdir(parents=True, exist_ok=True)
        if pointer.is_symlink() or pointer.exists():
            pointer.unlink()
        try:
            pointer.symlink_to(os.path.relpath(blob, pointer.parent))
        except OSError:  # a filesystem without symlinks: a copy still works
            shutil.copyfile(blob, pointer)
        return pointer

    def mark_absent(self, commit: str, filename: str) -> None:
        """Remember that the repo has no `filename` at `commit` (for offline checks)."""
        marker = self.root / ".no_exist" / commit / filename
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()

    def known_absent(self, commit: str, filename: str) -> bool:
        return (self.root / ".no_exist" / commit / filename).exists()

    def remove(self) -> bool:
        """Delete the repository's cached files; False when there were none."""
        if not self.root.exists():
            return False
        shutil.rmtree(self.root)
        locks = self.cache_dir / ".locks" / self.root.name
        shutil.rmtree(locks, ignore_errors=True)
        return True


@dataclass(frozen=True)
class CachedShard:
    """A GGUF of some layers of a hub GGUF (see `exoquic.download.gguf`)."""

    file: str  # the full GGUF it was cut from
    start_layer: int
    end_layer: int
    num_layers: int
    size_on_disk: int

    @property
    def layers_text(self) -> str:
        return f"layers {self.start_layer}-{self.end_layer} of {self.num_layers}"


@dataclass(frozen=True)
class CachedModel:
    repo_id: str
    size_on_disk: int  # whole files and shards together
    files: int  # whole files (shards not counted)
    revisions: tuple[str, ...]  # commit hashes
    shards: tuple[CachedShard, ...] = ()

    def summary(self) -> str:
        """`1.2 GB in 3 files; model.gguf layers 0-9 of 32` (for listings)."""
        parts = [format_size(self.size_on_disk)]
        if self.files:
            parts[0] += f" in {self.files} file{'s' if self.files != 1 else ''}"
        parts += [f"{s.file} {s.layers_text}" for s in self.shards]
        return "; ".join(parts)


_SHARD_FILE = re.compile(r"^(?P<stem>.+)\.layers-(?P<s>\d+)-(?P<e>\d+)-of-(?P<n>\d+)\.gguf$")


def cached_models(cache_dir: Path) -> list[CachedModel]:
    """Every model repository in the cache, with its size on disk and its GGUF shards."""
    if not cache_dir.exists():
        return []
    from huggingface_hub import scan_cache_dir  # imported here: see repo_folder_name

    # A repository holding only shards has no snapshot: the scan skips it (with a warning).
    info = scan_cache_dir(cache_dir)
    models = {
        repo.repo_id: CachedModel(
            repo_id=repo.repo_id,
            size_on_disk=repo.size_on_disk,
            files=repo.nb_files,
            revisions=tuple(sorted(r.commit_hash for r in repo.revisions)),
        )
        for repo in info.repos
        if repo.repo_type == "model"
    }
    for folder in sorted(cache_dir.glob("models--*")):
        shards = _shards_in(folder / "shards")
        if not shards:
            continue
        repo_id = folder.name.removeprefix("models--").replace("--", "/")
        known = models.get(repo_id, CachedModel(repo_id, 0, 0, ()))
        models[repo_id] = replace(
            known,
            size_on_disk=known.size_on_disk + sum(s.size_on_disk for s in shards),
            shards=tuple(shards),
        )
    return sorted(models.values(), key=lambda m: m.repo_id)


def _shards_in(folder: Path) -> list[CachedShard]:
    shards = []
    for path in sorted(folder.rglob("*.gguf")):
        match = _SHARD_FILE.match(path.name)
        if match is None:
            continue
        # shards/<commit>/<folders of the file in the repo>/<stem>.layers-...
        inner = path.parent.relative_to(folder).parts[1:]
        file = "/".join((*inner, match["stem"] + ".gguf"))
        layers = int(match["s"]), int(match["e"]), int(match["n"])
        shards.append(CachedShard(file, *layers, path.stat().st_size))
    return shards
