"""Single-file GGUFs from the hub: the whole file, or only the bytes of a node's layers.

For a layer range, the header is read with range requests (growing the range
until the tensor table is complete: a large vocabulary makes headers of
several megabytes), `gguf_slice.plan_slice` picks the byte ranges of the
range's tensors, and those are fetched in pieces, several at once, each into
its own part file (`<shard>.parts/<start>-<end>`) that a later attempt
continues. The pieces are then assembled into a GGUF of the shard, checked
by parsing it back, and renamed into place:

```
<cache>/models--{org}--{name}/shards/{commit}/{file stem}.layers-{S}-{E}-of-{N}.gguf
<cache>/models--{org}--{name}/shards/{commit}/{file}.header   the source's header bytes
```

A range covering every layer downloads the whole file into the hub cache
layout instead, where its sha256 is checked (see docs/models.md for exactly
what is and is not verified for a slice).
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from huggingface_hub.utils import WeakFileLock

from exoquic.download.cache import RepoCache
from exoquic.download.errors import DownloadCancelled, DownloadError, ModelNotCachedError
from exoquic.download.fetch import RemoteFile, fetch_range
from exoquic.download.gguf_slice import Run, SliceLayout, SourceFile, plan_slice
from exoquic.download.hub import (
    FetchOptions,
    HubSettings,
    RepoListing,
    _cache_dir,
    _fetch_one,
    _HubUnreachable,
    _Job,
    list_repo,
)
from exoquic.download.progress import ProgressCallback
from exoquic.models.errors import ModelLoadError
from exoquic.models.gguf_file import GGUFFile, GGUFHeaderIncomplete, parse_gguf_header
from exoquic.models.gguf_shard import SOURCE_TENSORS, shard_info
from exoquic.models.shard import Shard

HEADER_FIRST_READ = 2 << 20  # SmolLM2's header is 1.6 MB, Llama 3's about 8 MB
HEADER_MAX = 256 << 20  # a "header" larger than this is a hostile or broken file
PIECE_BYTES = 16 << 20  # one range request; pieces of the shard download in parallel
_SHARD_NAME = re.compile(r"^(?P<stem>.+)\.layers-(?P<s>\d+)-(?P<e>\d+)-of-(?P<n>\d+)\.gguf$")

Layers = tuple[int, int]  # first and last layer, inclusive


@dataclass(frozen=True)
class _Remote:
    """One GGUF of a listed repository, and how to ask the hub for its bytes."""

    repo_id: str
    listing: RepoListing
    file: RemoteFile
    url: str
    headers: dict[str, str]

    @property
    def source(self) -> SourceFile:
        return SourceFile(
            self.file.name, self.file.size, self.file.etag if self.file.is_lfs else None
        )


def download_gguf(
    repo_id: str,
    filename: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    layers: Layers | None = None,
    revision: str = "main",
    progress: ProgressCallback | None = None,
    max_workers: int = 4,
    token: str | None = None,
    endpoint: str | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """The GGUF `filename` of hub repo `repo_id`, or a GGUF of only `layers` of it.

    Returns the path of a file the GGUF loader reads: the whole file (always
    when `layers` is None or covers every layer, or when the whole file is
    cached already), else a shard GGUF holding at least `layers`. Partial work
    is continued; `cancel` stops it (DownloadCancelled), keeping what arrived.
    """
    _check_name(filename)
    settings = HubSettings.from_env(endpoint, token)
    cache = RepoCache(_cache_dir(cache_dir), repo_id)
    if settings.offline:
        return cached_gguf(repo_id, filename, cache.cache_dir, layers=layers, revision=revision)
    try:
        job = _job(cache, filename, FetchOptions(settings, revision, progress, max_workers, cancel))
    except _HubUnreachable:
        return cached_gguf(repo_id, filename, cache.cache_dir, layers=layers, revision=revision)
    listing = job.listing
    whole = job.snapshot / filename
    if layers is None or (whole.exists() and cache.blob(listing.files[filename].etag).exists()):
        return _fetch_one(job, filename)
    remote = _remote(job, filename)
    gf, prefix = _read_header(job, remote)
    shard = _shard(gf, filename, layers)
    if shard.is_first and shard.is_last:
        return _fetch_one(job, filename)  # the whole file, verified by its sha256
    held = _cached_slice(cache, listing.commit, filename, shard)
    if held is not None:
        return held
    layout = plan_slice(gf, prefix, shard, remote.source)
    dest = shard_path(cache, listing.commit, filename, shard)
    return _fetch_slice(job, remote, layout, dest)


def download_gguf_metadata(
    repo_id: str,
    filename: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    revision: str = "main",
) -> Path:
    """A GGUF with the file's metadata and model-wide tensors but no layer: what a
    node reads (config, tokenizer, chat template) before it knows its layers.

    The whole file serves instead when it is cached; offline, a cached metadata
    file does.
    """
    _check_name(filename)
    settings = HubSettings.from_env()
    cache = RepoCache(_cache_dir(cache_dir), repo_id)
    try:
        if settings.offline:
            raise _HubUnreachable("offline")
        job = _job(cache, filename, FetchOptions(settings, revision))
    except _HubUnreachable:
        return _cached_metadata(cache, filename, revision)
    whole = job.snapshot / filename
    if whole.exists():
        return whole
    remote = _remote(job, filename)
    gf, prefix = _read_header(job, remote)
    layout = plan_slice(gf, prefix, None, remote.source)
    return _fetch_slice(job, remote, layout, metadata_path(cache, job.listing.commit, filename))


def metadata_path(cache: RepoCache, commit: str, filename: str) -> Path:
    name = Path(filename)
    stem = name.name.removesuffix(".gguf")
    return cache.root / "shards" / commit / name.parent / f"{stem}.metadata.gguf"


def _cached_metadata(cache: RepoCache, filename: str, revision: str) -> Path:
    commit = cache.resolve(revision)
    if commit is not None:
        for path in (cache.snapshot(commit) / filename, metadata_path(cache, commit, filename)):
            if path.exists():
                return path
    raise ModelNotCachedError(cache.repo_id, revision, [f"{filename} (header)"])


def read_gguf_header(
    repo_id: str,
    filename: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    revision: str = "main",
    progress: ProgressCallback | None = None,
) -> GGUFFile:
    """The parsed header of a hub GGUF, read with range requests (and kept in the
    cache for the download that usually follows). Its `path` is the file name."""
    _check_name(filename)
    cache = RepoCache(_cache_dir(cache_dir), repo_id)
    settings = HubSettings.from_env()
    try:
        job = _job(cache, filename, FetchOptions(settings, revision, progress))
    except _HubUnreachable as e:
        raise DownloadError(f"cannot reach the hub at {settings.endpoint}: {e}") from e
    return _read_header(job, _remote(job, filename))[0]


def _job(cache: RepoCache, filename: str, options: FetchOptions) -> _Job:
    """List the repository (one API call), check it has the file, and pin the commit."""
    listing = list_repo(cache.repo_id, options.revision, options.settings)
    if filename not in listing.files:
        ggufs = sorted(f for f in listing.files if f.endswith(".gguf"))
        raise DownloadError(
            f"{cache.repo_id} has no file {filename!r} (GGUF files: {ggufs or 'none'})"
        )
    cache.write_ref(options.revision, listing.commit)
    return _Job(cache, listing, options)


def cached_gguf(
    repo_id: str,
    filename: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    layers: Layers | None = None,
    revision: str = "main",
) -> Path:
    """The cached whole file, or a cached shard holding `layers`, without network use."""
    cache = RepoCache(_cache_dir(cache_dir), repo_id)
    commit = cache.resolve(revision)
    if commit is not None:
        whole = cache.snapshot(commit) / filename
        if whole.exists():
            return whole
        if layers is not None:
            for path, (start, end, _) in cached_slices(cache, commit, filename):
                if start <= layers[0] and layers[1] <= end:
                    return path
    wanted = filename if layers is None else f"{filename} (layers {layers[0]}-{layers[1]})"
    raise ModelNotCachedError(repo_id, revision, [wanted])


def shard_path(cache: RepoCache, commit: str, filename: str, shard: Shard) -> Path:
    name = Path(filename)
    stem = name.name.removesuffix(".gguf")
    layers = f"layers-{shard.start_layer}-{shard.end_layer}-of-{shard.num_layers}"
    return cache.root / "shards" / commit / name.parent / f"{stem}.{layers}.gguf"


def cached_slices(
    cache: RepoCache, commit: str, filename: str
) -> list[tuple[Path, tuple[int, int, int]]]:
    """The finished shard files of `filename` at `commit`: (path, (start, end, layers))."""
    name = Path(filename)
    folder = cache.root / "shards" / commit / name.parent
    stem = name.name.removesuffix(".gguf")
    found = []
    for path in sorted(folder.glob(f"{glob_escape(stem)}.layers-*.gguf")):
        match = _SHARD_NAME.match(path.name)
        if match and match["stem"] == stem:
            found.append((path, (int(match["s"]), int(match["e"]), int(match["n"]))))
    return found


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


# -- the header -------------------------------------------------------------------------


def _remote(job: _Job, filename: str) -> _Remote:
    file = job.listing.files[filename]
    return _Remote(job.repo_id, job.listing, file, job.url(filename), job.headers())


def _read_header(job: _Job, remote: _Remote) -> tuple[GGUFFile, bytes]:
    """The source's parsed header and its bytes, fetched (or continued) in growing ranges.

    The prefix is kept in `<file>.header` next to the shards, so the next shard
    of the same file needs no header request.
    """
    path = job.cache.root / "shards" / job.listing.commit / f"{remote.file.name}.header"
    path.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(path.with_name(path.name + ".lock")):  # another process may grow it
        want = HEADER_FIRST_READ
        while True:
            end = min(max(want, _size(path)), remote.file.size)
            if _size(path) < end:
                report = _reporter(job, f"{remote.file.name} (header)", partial(_pair, total=end))
                fetch_range(remote.url, path, remote.file, 0, end, remote.headers, report)
            prefix = path.read_bytes()
            try:
                gf = parse_gguf_header(prefix, remote.file.size, remote.file.name)
                return gf, prefix[: gf.data_start]
            except GGUFHeaderIncomplete as e:
                if end >= min(remote.file.size, HEADER_MAX):
                    raise DownloadError(
                        f"{remote.file.name}: no complete GGUF header in {end} bytes"
                    ) from e
                want = max(e.needed, 2 * end)
            except ModelLoadError as e:
                path.unlink(missing_ok=True)  # not to be trusted next time either
                raise DownloadError(f"{job.repo_id}: {e}") from e


def _shard(gf: GGUFFile, filename: str, layers: Layers) -> Shard:
    arch = gf.metadata.get("general.architecture")
    count = gf.metadata.get(f"{arch}.block_count")
    if not isinstance(count, int) or count < 1:
        raise DownloadError(f"{filename}: the header gives no layer count ({arch}.block_count)")
    try:
        return Shard(filename, layers[0], layers[1], count)
    except ValueError as e:
        raise DownloadError(f"{filename}: {e}") from e


def _cached_slice(cache: RepoCache, commit: str, filename: str, shard: Shard) -> Path | None:
    for path, (start, end, count) in cached_slices(cache, commit, filename):
        if count == shard.num_layers and start <= shard.start_layer and shard.end_layer <= end:
            return path
    return None


# -- the slice --------------------------------------------------------------------------


def _fetch_slice(job: _Job, remote: _Remote, layout: SliceLayout, dest: Path) -> Path:
    """Fetch the layout's byte ranges in parallel pieces, then assemble and check the shard."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(dest.with_name(dest.name + ".lock")):  # another process may be at it
        if dest.exists():
            return dest
        parts = dest.with_name(dest.name + ".parts")
        parts.mkdir(exist_ok=True)
        pieces = _pieces(layout)
        counts = {piece: 0 for piece in pieces}
        lock = threading.Lock()
        label = dest.name

        def fetch(piece: tuple[int, int]) -> None:
            def count(done: int) -> tuple[int, int]:
                with lock:
                    counts[piece] = done
                    return sum(counts.values()), layout.fetched_bytes

            report = _reporter(job, label, count)
            part = _part(parts, piece)
            if _size(part) > piece[1] - piece[0]:  # not written by us: start it over
                part.unlink()
            fetch_range(remote.url, part, remote.file, *piece, remote.headers, report)

        with ThreadPoolExecutor(job.workers, thread_name_prefix="exoquic-slice") as pool:
            try:
                list(pool.map(fetch, pieces))
            except BaseException:
                job.stop.set()  # running pieces stop at their next chunk
                raise
        _assemble(layout, parts, dest)
        shutil.rmtree(parts)
        return dest


def _pieces(layout: SliceLayout) -> list[tuple[int, int]]:
    return [piece for run in layout.runs for piece in _run_pieces(run)]


def _run_pieces(run: Run) -> list[tuple[int, int]]:
    """The run's source bytes in ranges of at most PIECE_BYTES."""
    starts = range(run.source_start, run.source_end, PIECE_BYTES)
    return [(start, min(start + PIECE_BYTES, run.source_end)) for start in starts]


def _part(parts: Path, piece: tuple[int, int]) -> Path:
    return parts / f"{piece[0]}-{piece[1]}"


def _assemble(layout: SliceLayout, parts: Path, dest: Path) -> None:
    """Write the shard GGUF under a temporary name, check it, and rename it into place."""
    tmp = dest.with_name(dest.name + ".incomplete")
    with tmp.open("wb") as out:
        out.write(layout.header)
        for run in layout.runs:
            out.seek(run.dest_start)  # the gap before it reads as zeros
            for piece in _run_pieces(run):
                with _part(parts, piece).open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        out.truncate(layout.size)
    _check_shard(tmp, layout)
    tmp.replace(dest)


def _check_shard(path: Path, layout: SliceLayout) -> None:
    """The assembled file must parse as a GGUF holding exactly the planned tensors."""
    try:
        gf = GGUFFile.open(path)
        shard_info(gf.metadata, str(path))
    except ModelLoadError as e:
        raise DownloadError(f"the assembled shard does not parse: {e}") from e
    placed = {name: (t.offset, t.nbytes) for name, t in gf.tensors.items()}
    if SOURCE_TENSORS not in gf.metadata or placed != layout.tensors or gf.size != layout.size:
        raise DownloadError(f"{path}: the assembled shard does not match its plan")


def _reporter(
    job: _Job, label: str, count: Callable[[int], tuple[int, int]]
) -> Callable[[int], None]:
    def report(done: int) -> None:
        if job.should_stop():
            raise DownloadCancelled(f"{job.repo_id}: download of {label} cancelled")
        job.progress(label, *count(done))

    return report


def _pair(done: int, total: int) -> tuple[int, int]:
    return done, total


def _check_name(filename: str) -> None:
    # The name becomes a path in the cache: it must stay inside it.
    parts = Path(filename).parts
    if (
        not filename.endswith(".gguf")
        or filename.startswith("/")
        or ".." in parts
        or "\\" in filename
    ):
        raise DownloadError(f"{filename!r} is not a GGUF file name in a repository")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
