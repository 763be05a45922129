"""Download the files one shard of a Hugging Face model needs, and nothing more.

Order of work: one API call lists the repository at a pinned commit with
every file's size and hash; `config.json` and `model.safetensors.index.json`
come first; the index names the safetensors files holding the shard's tensors;
those and the tokenizer files then download several at a time. Everything
lands in the hub cache layout (see `exoquic.download.cache`), pinned to the
commit the listing returned, so a branch moving mid-download cannot mix files
of two commits.

Environment, read at call time: `HF_ENDPOINT` (hub address, e.g. a mirror),
`HF_TOKEN` (private and gated repos; huggingface_hub's stored login also
works), `HF_HUB_OFFLINE=1` (never touch the network: use the cache or fail
listing the missing files). When the hub cannot be reached, a fully cached
shard is used as in offline mode.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx2
import trio
from huggingface_hub import HfApi, constants, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import build_hf_headers

from exoquic import __version__
from exoquic.download.cache import RepoCache, default_cache_dir
from exoquic.download.errors import (
    DownloadCancelled,
    DownloadError,
    HubUnreachableError,
    ModelNotCachedError,
)
from exoquic.download.fetch import RemoteFile, fetch_blob
from exoquic.download.progress import ProgressCallback
from exoquic.download.selection import (
    AUX_FILES,
    CONFIG_FILE,
    INDEX_FILE,
    SINGLE_WEIGHTS_FILE,
    aux_files_present,
    layer_count_of,
    weight_files_for_shard,
)
from exoquic.models.shard import Shard

log = logging.getLogger(__name__)

# The hub's answer names cache paths (snapshots/<commit>, blobs/<etag>): only
# lowercase hex of the right length may become a path part.
_SHA1 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")

# The shard to fetch, given the repo's config.json; None fetches only the small files.
ShardFor = Callable[[dict[str, Any]], Shard | None]
"""Picks the shard once the model's config.json is known."""


@dataclass(frozen=True)
class HubSettings:
    """Where and how to reach the hub, from arguments or the environment."""

    endpoint: str
    token: str | None
    offline: bool

    @classmethod
    def from_env(cls, endpoint: str | None = None, token: str | None = None) -> HubSettings:
        # huggingface_hub reads these once at import; reading them per call lets
        # a running node (and tests) change them.
        env_endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
        # Offline at import time, huggingface_hub refuses every request anyway.
        offline = offline or constants.is_offline_mode()
        return cls((endpoint or env_endpoint).rstrip("/"), token, offline)


@dataclass(frozen=True)
class FetchOptions:
    """How one download runs, as its public function was asked: the hub, the
    revision to pin, progress reports (`progress(file, done, total)`, from worker
    threads), files or pieces fetched at once, and the caller's stop switch."""

    settings: HubSettings
    revision: str = "main"
    progress: ProgressCallback | None = None
    max_workers: int = 4
    cancel: threading.Event | None = None


@dataclass(frozen=True)
class RepoListing:
    """A repository's files at one commit."""

    commit: str
    files: dict[str, RemoteFile]


def download_shard(
    repo_id: str,
    shard: Shard,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    revision: str = "main",
    progress: ProgressCallback | None = None,
    max_workers: int = 4,
    token: str | None = None,
    endpoint: str | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Download what `shard` needs from hub repo `repo_id`; return the snapshot directory.

    The directory (`<cache>/models--org--name/snapshots/<commit>`) holds
    config.json, the safetensors index, the safetensors files with the shard's
    tensors and the tokenizer files; `exoquic.models.hf_loader.load_hf_shard`
    reads it. Files already cached are not fetched again; partial files are
    resumed. `progress(file, done, total)` is called from worker threads.
    Setting `cancel` stops the download (DownloadCancelled), keeping partial
    files. Raises DownloadError (IntegrityError, ModelNotCachedError).
    """
    settings = HubSettings.from_env(endpoint, token)
    options = FetchOptions(settings, revision, progress, max_workers, cancel)
    return _download(repo_id, partial(_check_layers, shard), cache_dir, options)


def download_model(
    repo_id: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    layers: tuple[int, int] | None = None,
    revision: str = "main",
    progress: ProgressCallback | None = None,
    max_workers: int = 4,
    token: str | None = None,
    endpoint: str | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Like `download_shard` for layers `start..end` (inclusive; default: all layers).

    For callers that do not know the layer count: it is read from config.json.
    """

    def shard_for(config: dict[str, Any]) -> Shard:
        num_layers = layer_count_of(config)
        start, end = layers if layers is not None else (0, num_layers - 1)
        try:
            return Shard(repo_id, start, end, num_layers)
        except ValueError as e:
            raise DownloadError(f"{repo_id}: {e}") from e

    settings = HubSettings.from_env(endpoint, token)
    options = FetchOptions(settings, revision, progress, max_workers, cancel)
    return _download(repo_id, shard_for, cache_dir, options)


def download_metadata(
    repo_id: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    revision: str = "main",
    cancel: threading.Event | None = None,
) -> Path:
    """Fetch only config.json, the index and the tokenizer files; return the snapshot.

    Enough to read the model's config and tokenizer before a plan says which
    layers this node will hold.
    """
    options = FetchOptions(HubSettings.from_env(), revision, cancel=cancel)
    return _download(repo_id, lambda config: None, cache_dir, options)


async def download_shard_async(
    repo_id: str,
    shard: Shard,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    revision: str = "main",
    progress: ProgressCallback | None = None,
    max_workers: int = 4,
) -> Path:
    """`download_shard` in a worker thread; cancelling the caller stops the download."""
    cancel = threading.Event()
    run = partial(
        download_shard,
        repo_id,
        shard,
        cache_dir,
        revision=revision,
        progress=progress,
        max_workers=max_workers,
        cancel=cancel,
    )
    try:
        return await trio.to_thread.run_sync(run, abandon_on_cancel=True)
    except trio.Cancelled:
        cancel.set()  # the abandoned thread stops at its next chunk
        raise


def cached_shard(
    repo_id: str,
    shard: Shard,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    revision: str = "main",
) -> Path:
    """The cached snapshot holding everything `shard` needs, without any network use.

    Raises ModelNotCachedError listing the missing files.
    """
    cache = RepoCache(_cache_dir(cache_dir), repo_id)
    return _from_cache(cache, revision, partial(_check_layers, shard))


# -- the download --------------------------------------------------------------------


@dataclass
class _Job:
    """One download under way: the repository at the listed commit, and its options."""

    cache: RepoCache
    listing: RepoListing
    options: FetchOptions
    stop: threading.Event = field(default_factory=threading.Event)  # set when a fetch failed

    @property
    def repo_id(self) -> str:
        return self.cache.repo_id

    @property
    def snapshot(self) -> Path:
        return self.cache.snapshot(self.listing.commit)

    @property
    def workers(self) -> int:
        return max(1, self.options.max_workers)

    def should_stop(self) -> bool:
        cancel = self.options.cancel
        return self.stop.is_set() or (cancel is not None and cancel.is_set())

    def progress(self, file: str, done: int, total: int) -> None:
        if self.options.progress is not None:
            self.options.progress(file, done, total)

    def url(self, name: str) -> str:
        """Where the hub serves `name` at the listed commit."""
        endpoint = self.options.settings.endpoint
        return hf_hub_url(self.repo_id, name, revision=self.listing.commit, endpoint=endpoint)

    def headers(self) -> dict[str, str]:
        token = self.options.settings.token
        return build_hf_headers(token=token, library_name="exoquic", library_version=__version__)


def _download(
    repo_id: str,
    shard_for: ShardFor,
    cache_dir: str | os.PathLike[str] | None,
    options: FetchOptions,
) -> Path:
    cache = RepoCache(_cache_dir(cache_dir), repo_id)
    settings, revision = options.settings, options.revision
    if settings.offline:
        return _from_cache(cache, revision, shard_for)
    try:
        listing = list_repo(repo_id, revision, settings)
    except _HubUnreachable as e:
        log.warning("%s: hub unreachable (%s); trying the cache", repo_id, e)
        try:
            return _from_cache(cache, revision, shard_for)
        except ModelNotCachedError as not_cached:
            raise HubUnreachableError(
                f"cannot reach the hub at {settings.endpoint}: {e}; {not_cached.fact}. "
                "Check the network (and HF_ENDPOINT if you set it), then try again."
            ) from e
    job = _Job(cache, listing, options)
    cache.write_ref(revision, listing.commit)
    for name in AUX_FILES:
        if name not in listing.files:
            cache.mark_absent(listing.commit, name)
    _fetch_all(job, [f for f in (CONFIG_FILE, INDEX_FILE) if f in listing.files])
    shard = shard_for(_read_config(job.snapshot))
    weights = (
        []
        if shard is None
        else _weight_files(job.snapshot, shard, has=lambda f: f in listing.files)
    )
    if unlisted := [f for f in weights if f not in listing.files]:
        raise DownloadError(f"{repo_id}: the index names files the repo lacks: {unlisted}")
    _fetch_all(job, [*weights, *aux_files_present(listing.files)])
    return job.snapshot


def _fetch_all(job: _Job, names: Iterable[str]) -> None:
    """Fetch `names` (deduplicated) with up to `max_workers` at once (see FetchOptions)."""
    todo = list(dict.fromkeys(names))
    for name in todo:  # announce every size first so the overall total is right
        job.progress(name, 0, job.listing.files[name].size)
    with ThreadPoolExecutor(job.workers, thread_name_prefix="exoquic-download") as pool:
        futures: list[Future[Path]] = [pool.submit(_fetch_one, job, name) for name in todo]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            job.stop.set()  # running fetches stop at their next chunk
            for future in futures:
                future.cancel()
            raise


def _fetch_one(job: _Job, name: str) -> Path:
    remote = job.listing.files[name]
    blob = job.cache.blob(remote.etag)
    pointer = job.snapshot / name

    def report(done: int) -> None:
        if job.should_stop():
            raise DownloadCancelled(f"{job.repo_id}: download of {name} cancelled")
        job.progress(name, done, remote.size)

    if blob.exists() and blob.stat().st_size != remote.size:
        blob.unlink()  # truncated or replaced behind our back
    if pointer.exists() and blob.exists():
        report(remote.size)
        return pointer
    fetch_blob(job.url(name), blob, job.cache.lock_path(remote.etag), remote, job.headers(), report)
    return job.cache.link(job.listing.commit, name, blob)


# -- listing -------------------------------------------------------------------------


class _HubUnreachable(Exception):
    """No answer from the hub (network down, DNS, 5xx): the cache may still serve."""


def list_repo(repo_id: str, revision: str, settings: HubSettings) -> RepoListing:
    """The repository's files at `revision`, with sizes and hashes (one API call)."""
    api = HfApi(endpoint=settings.endpoint, library_name="exoquic", library_version=__version__)
    try:
        info = api.model_info(repo_id, revision=revision, files_metadata=True, token=settings.token)
    except GatedRepoError as e:
        raise DownloadError(
            f"{repo_id} is gated: accept its license on the hub, then set HF_TOKEN"
        ) from e
    except RepositoryNotFoundError as e:
        raise DownloadError(
            f"{repo_id}: no such model on {settings.endpoint} "
            "(if it is private, set HF_TOKEN to a token that can read it)"
        ) from e
    except RevisionNotFoundError as e:
        raise DownloadError(f"{repo_id}: no revision {revision!r}") from e
    except (httpx2.TransportError, OfflineModeIsEnabled) as e:
        raise _HubUnreachable(str(e) or type(e).__name__) from e
    except HfHubHTTPError as e:
        if e.response.status_code >= 500:
            raise _HubUnreachable(f"HTTP {e.response.status_code}") from e
        raise DownloadError(f"{repo_id}: {e}") from e
    if not info.sha or info.siblings is None:
        raise DownloadError(f"{repo_id}: the hub's answer lacks the commit or the file list")
    if not isinstance(info.sha, str) or not _SHA1.fullmatch(info.sha):
        raise DownloadError(f"{repo_id}: the hub gave {info.sha!r} as commit, not a sha1 in hex")
    files = {}
    for s in info.siblings:
        etag = s.lfs.sha256 if s.lfs else s.blob_id
        size = s.lfs.size if s.lfs else s.size
        if etag is None or size is None:
            raise DownloadError(f"{repo_id}: the hub gave no size or hash for {s.rfilename}")
        _check_file(repo_id, s.rfilename, etag, size, is_lfs=s.lfs is not None)
        files[s.rfilename] = RemoteFile(s.rfilename, size, etag, is_lfs=s.lfs is not None)
    return RepoListing(info.sha, files)


def _check_file(repo_id: str, name: str, etag: object, size: object, *, is_lfs: bool) -> None:
    """A listed file's hash must be hex of its kind (it names the blob on disk)
    and its size a count of bytes (downloads stop there)."""
    pattern, kind = (_SHA256, "sha256") if is_lfs else (_SHA1, "git blob id")
    if not isinstance(etag, str) or not pattern.fullmatch(etag):
        raise DownloadError(f"{repo_id}: the hub gave {etag!r} as the {kind} of {name}, not hex")
    if type(size) is not int or size < 0:
        raise DownloadError(f"{repo_id}: the hub gave {size!r} as the size of {name}")


# -- shared by online and offline ----------------------------------------------------


def _check_layers(shard: Shard, config: dict[str, Any]) -> Shard:
    num_layers = layer_count_of(config)
    if num_layers != shard.num_layers:
        raise DownloadError(
            f"the model has {num_layers} layers but the shard expects {shard.num_layers}"
        )
    return shard


def _read_config(snapshot: Path) -> dict[str, Any]:
    try:
        config = json.loads((snapshot / CONFIG_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise DownloadError(f"{snapshot.parent.parent.name}: the repo has no config.json") from e
    except (OSError, ValueError) as e:
        raise DownloadError(f"{snapshot / CONFIG_FILE}: unreadable: {e}") from e
    if not isinstance(config, dict):
        raise DownloadError(f"{snapshot / CONFIG_FILE}: not a JSON object")
    return config


def _weight_files(snapshot: Path, shard: Shard, has: Callable[[str], bool]) -> list[str]:
    """The weight files `shard` needs, from the cached index (or the single file)."""
    if has(INDEX_FILE):
        index = snapshot / INDEX_FILE
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DownloadError(f"{index}: unusable index: {e}") from e
        config = _read_config(snapshot)
        tied = bool(config.get("tie_word_embeddings", False))
        return [
            _safe(index, f)
            for f in weight_files_for_shard(weight_map, shard, tie_word_embeddings=tied)
        ]
    if has(SINGLE_WEIGHTS_FILE):
        return [SINGLE_WEIGHTS_FILE]
    raise DownloadError(f"{snapshot}: the repo has neither {INDEX_FILE} nor {SINGLE_WEIGHTS_FILE}")


def _safe(index: Path, name: object) -> str:
    # The index is downloaded data: a file name must stay inside the snapshot.
    text = str(name)
    if not text or text.startswith("/") or ".." in Path(text).parts or "\\" in text:
        raise DownloadError(f"{index}: invalid file name {text!r} in weight_map")
    return text


def _from_cache(cache: RepoCache, revision: str, shard_for: ShardFor) -> Path:
    """The snapshot with every file the shard needs, or ModelNotCachedError."""
    commit = cache.resolve(revision)
    if commit is None:
        raise ModelNotCachedError(cache.repo_id, revision, [CONFIG_FILE, INDEX_FILE])
    snapshot = cache.snapshot(commit)
    if not (snapshot / CONFIG_FILE).exists():
        raise ModelNotCachedError(cache.repo_id, revision, [CONFIG_FILE])
    missing: list[str] = []
    shard = shard_for(_read_config(snapshot))
    try:
        weights = (
            []
            if shard is None
            else _weight_files(snapshot, shard, has=lambda f: (snapshot / f).exists())
        )
    except DownloadError:
        weights, missing = [], [f"{INDEX_FILE} (or {SINGLE_WEIGHTS_FILE})"]
    missing += [f for f in weights if not (snapshot / f).exists()]
    missing += [
        f for f in AUX_FILES if not (snapshot / f).exists() and not cache.known_absent(commit, f)
    ]
    if missing:
        raise ModelNotCachedError(cache.repo_id, revision, missing)
    return snapshot


def _cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()
