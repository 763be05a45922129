"""download_shard against a local hub: selection, resume, integrity, offline, tokens."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
import trio
from fixtures.hub_server import TINY_LAYERS, TINY_REPO, HubServer, run_hub_server

from exoquic.download import (
    DownloadCancelled,
    DownloadError,
    DownloadProgress,
    IntegrityError,
    ModelNotCachedError,
    cached_shard,
    download_model,
    download_shard,
    download_shard_async,
    fetch,
)
from exoquic.models.shard import Shard

FILE1 = "model-00001-of-00003.safetensors"  # embedding, layers 0-1
FILE2 = "model-00002-of-00003.safetensors"  # layers 2-3
FILE3 = "model-00003-of-00003.safetensors"  # layers 4-5, final norm
SMALL_FILES = {
    "config.json",
    "model.safetensors.index.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


def shard(start: int, end: int) -> Shard:
    return Shard(TINY_REPO, start, end, TINY_LAYERS)


def same_content(snapshot: Path, source: Path, name: str) -> bool:
    return (snapshot / name).read_bytes() == (source / name).read_bytes()


@pytest.mark.parametrize(
    ("start", "end", "weights"),
    [
        (0, 1, {FILE1}),  # first shard: embedding + its layers
        (2, 3, {FILE2}),  # middle shard: its layers only
        (2, 4, {FILE2, FILE3}),
        (4, 5, {FILE3, FILE1}),  # last shard of a tied model needs the embedding's file
        (0, 5, {FILE1, FILE2, FILE3}),
    ],
)
def test_a_shard_downloads_only_its_files(
    hub: HubServer, cache_dir: Path, tiny_repo_dir: Path, start: int, end: int, weights: set[str]
) -> None:
    snapshot = download_shard(TINY_REPO, shard(start, end), cache_dir)

    assert hub.downloaded_files() == SMALL_FILES | weights  # README.md is never fetched
    for name in SMALL_FILES | weights:
        assert same_content(snapshot, tiny_repo_dir, name)
    assert not (snapshot / "special_tokens_map.json").exists()  # the repo has none


def test_cached_files_are_not_fetched_again(hub: HubServer, cache_dir: Path) -> None:
    first = download_shard(TINY_REPO, shard(0, 1), cache_dir)
    hub.clear_log()

    again = download_shard(TINY_REPO, shard(0, 2), cache_dir)

    assert again == first
    assert hub.downloaded_files() == {FILE2}  # FILE1 and the small files came from the cache


def test_snapshot_is_pinned_to_the_listed_commit(hub: HubServer, cache_dir: Path) -> None:
    snapshot = download_shard(TINY_REPO, shard(2, 3), cache_dir)

    commit = hub.repos[TINY_REPO].commit
    assert snapshot.name == commit
    assert (snapshot.parents[1] / "refs" / "main").read_text() == commit
    resolves = [e.path for e in hub.requests(method="GET", server="hub") if "/resolve/" in e.path]
    assert resolves and all(f"/resolve/{commit}/" in p for p in resolves)


def test_a_cut_download_resumes_with_a_range_request(
    hub: HubServer, cache_dir: Path, tiny_repo_dir: Path
) -> None:
    size = (tiny_repo_dir / FILE2).stat().st_size
    hub.cut_after(FILE2, size // 2)

    snapshot = download_shard(TINY_REPO, shard(2, 3), cache_dir)

    gets = [e for e in hub.requests(method="GET", server="cdn") if e.filename == FILE2]
    assert [e.range for e in gets] == [None, f"bytes={size // 2}-"]
    assert hub.bytes_served(FILE2) == size  # nothing fetched twice
    assert same_content(snapshot, tiny_repo_dir, FILE2)


def test_an_interrupted_download_resumes_on_the_next_call(
    hub: HubServer, cache_dir: Path, tiny_repo_dir: Path
) -> None:
    """A process that stops mid-file (Ctrl-C, crash) loses nothing already on disk."""
    size = (tiny_repo_dir / FILE2).stat().st_size

    class Stop(Exception):
        pass

    def stop_midway(file: str, done: int, total: int) -> None:
        if file == FILE2 and done >= size // 3:
            raise Stop

    with pytest.raises(Stop):
        download_shard(TINY_REPO, shard(2, 3), cache_dir, progress=stop_midway, max_workers=1)
    sha256 = hub.repos[TINY_REPO].files[FILE2].sha256
    kept = next(cache_dir.rglob(f"blobs/{sha256}.incomplete")).stat().st_size
    assert size // 3 <= kept < size

    snapshot = download_shard(TINY_REPO, shard(2, 3), cache_dir)

    last_get = [e for e in hub.requests(method="GET", server="cdn") if e.filename == FILE2][-1]
    assert last_get.range == f"bytes={kept}-"
    assert hub.bytes_served(FILE2) < 2 * size
    assert same_content(snapshot, tiny_repo_dir, FILE2)
    assert not list(cache_dir.rglob("*.incomplete"))


def test_a_corrupted_file_is_detected_and_fetched_again(
    hub: HubServer, cache_dir: Path, tiny_repo_dir: Path
) -> None:
    hub.corrupt(FILE2)
    hub.corrupt("config.json")  # a regular (non-LFS) file: checked by its git blob id

    snapshot = download_shard(TINY_REPO, shard(2, 3), cache_dir)

    assert same_content(snapshot, tiny_repo_dir, FILE2)
    assert same_content(snapshot, tiny_repo_dir, "config.json")
    size = (tiny_repo_dir / FILE2).stat().st_size
    assert hub.bytes_served(FILE2) == 2 * size


def test_a_file_corrupted_twice_fails_clearly(hub: HubServer, cache_dir: Path) -> None:
    hub.corrupt(FILE2, times=2)

    with pytest.raises(IntegrityError, match=f"{FILE2}.*sha256.*tried twice"):
        download_shard(TINY_REPO, shard(2, 3), cache_dir)

    blobs = cache_dir.rglob("blobs/*")
    assert all(p.stat().st_size != hub.repos[TINY_REPO].files[FILE2].size for p in blobs)


def test_offline_mode_uses_the_cache_without_any_request(
    hub: HubServer, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    online = download_shard(TINY_REPO, shard(2, 3), cache_dir)
    hub.clear_log()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    assert download_shard(TINY_REPO, shard(2, 3), cache_dir) == online
    assert cached_shard(TINY_REPO, shard(2, 3), cache_dir) == online
    assert hub.log == []


def test_offline_mode_without_the_files_lists_what_is_missing(
    hub: HubServer, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    download_shard(TINY_REPO, shard(0, 1), cache_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    with pytest.raises(ModelNotCachedError) as caught:
        download_shard(TINY_REPO, shard(4, 5), cache_dir)
    assert caught.value.missing == [FILE3]  # FILE1 (the tied head) is cached
    assert FILE3 in str(caught.value)
    assert "HF_HUB_OFFLINE" in str(caught.value)

    with pytest.raises(ModelNotCachedError) as nothing:
        download_shard("exoquic-test/never-downloaded", shard(0, 1), cache_dir)
    assert "config.json" in nothing.value.missing


def test_an_unreachable_hub_falls_back_to_the_cache(
    hub: HubServer, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    online = download_shard(TINY_REPO, shard(2, 3), cache_dir)
    with run_hub_server() as stopped:
        dead_endpoint = stopped.endpoint  # nothing listens there once the block ends
    monkeypatch.setenv("HF_ENDPOINT", dead_endpoint)

    assert download_shard(TINY_REPO, shard(2, 3), cache_dir) == online
    with pytest.raises(DownloadError, match=r"cannot reach the hub.*missing"):
        download_shard(TINY_REPO, shard(4, 5), cache_dir)


def test_hf_token_is_sent_to_the_hub_but_not_to_the_cdn(
    hub: HubServer, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub.required_token = "hf_secret"
    with pytest.raises(DownloadError, match="HF_TOKEN"):
        download_shard(TINY_REPO, shard(2, 3), cache_dir)

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    download_shard(TINY_REPO, shard(2, 3), cache_dir)

    assert FILE2 in hub.downloaded_files()
    assert {e.authorization for e in hub.requests(server="cdn")} == {None}


def test_an_unknown_repo_or_revision_fails_clearly(hub: HubServer, cache_dir: Path) -> None:
    with pytest.raises(DownloadError, match="no such model"):
        download_shard("exoquic-test/missing", shard(0, 1), cache_dir)
    with pytest.raises(DownloadError, match="no revision 'v9'"):
        download_shard(TINY_REPO, shard(0, 1), cache_dir, revision="v9")


def test_a_shard_of_another_layer_count_is_refused(hub: HubServer, cache_dir: Path) -> None:
    with pytest.raises(DownloadError, match="6 layers but the shard expects 30"):
        download_shard(TINY_REPO, Shard(TINY_REPO, 0, 9, 30), cache_dir)
    assert not hub.downloaded_files() - {"config.json", "model.safetensors.index.json"}


def test_download_model_reads_the_layer_count_from_the_config(
    hub: HubServer, cache_dir: Path
) -> None:
    download_model(TINY_REPO, cache_dir, layers=(2, 3))
    assert hub.downloaded_files() == SMALL_FILES | {FILE2}

    with pytest.raises(DownloadError, match=r"invalid shard layers 4\.\.9"):
        download_model(TINY_REPO, cache_dir, layers=(4, 9))


def test_progress_adds_up_to_the_downloaded_bytes(
    hub: HubServer, cache_dir: Path, tiny_repo_dir: Path
) -> None:
    progress = DownloadProgress(TINY_REPO)

    download_shard(TINY_REPO, shard(2, 3), cache_dir, progress=progress)

    snap = progress.snapshot()
    expected = sum((tiny_repo_dir / f).stat().st_size for f in SMALL_FILES | {FILE2})
    assert snap["done"] == snap["total"] == expected
    assert snap["complete"] and snap["fraction"] == 1.0
    assert {f["name"] for f in snap["files"]} == SMALL_FILES | {FILE2}


def test_a_cancelled_download_stops_and_keeps_its_partial_file(
    hub: HubServer, cache_dir: Path
) -> None:
    cancel = threading.Event()

    def cancel_midway(file: str, done: int, total: int) -> None:
        if file == FILE2 and 0 < done < total:
            cancel.set()

    with pytest.raises(DownloadCancelled):
        download_shard(TINY_REPO, shard(2, 3), cache_dir, progress=cancel_midway, cancel=cancel)
    assert list(cache_dir.rglob("*.incomplete"))


def test_the_default_cache_lives_under_exoquic_home(
    hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXOQUIC_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("EXOQUIC_HF_CACHE", raising=False)

    snapshot = download_shard(TINY_REPO, shard(2, 3))

    assert snapshot.is_relative_to(tmp_path / "home" / "models" / "hub")


async def test_download_shard_async_runs_in_a_thread(hub: HubServer, cache_dir: Path) -> None:
    snapshot = await download_shard_async(TINY_REPO, shard(2, 3), cache_dir)
    assert (snapshot / FILE2).is_file()


async def test_cancelling_the_async_download_stops_its_threads(
    hub: HubServer, cache_dir: Path
) -> None:
    token = trio.lowlevel.current_trio_token()
    cancelled = threading.Event()  # set once the caller has seen its cancellation
    with trio.CancelScope() as scope:

        def cancel_midway(file: str, done: int, total: int) -> None:
            if file == FILE2 and 0 < done < total and not cancelled.is_set():
                trio.from_thread.run_sync(scope.cancel, trio_token=token)
                cancelled.wait(10)  # hold this chunk until the cancellation went through

        await download_shard_async(TINY_REPO, shard(2, 3), cache_dir, progress=cancel_midway)
    cancelled.set()
    assert scope.cancelled_caught
    with trio.fail_after(10):  # the abandoned thread notices at its next chunk
        while any(t.name.startswith("exoquic-download") for t in threading.enumerate()):
            await trio.sleep(0.05)
    assert list(cache_dir.rglob("*.incomplete"))
    assert not list(cache_dir.rglob(f"snapshots/*/{FILE2}"))


def test_transient_errors_are_retried_then_reported(
    hub: HubServer, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch, "RETRY_DELAY_S", 0.0)
    hub.fail(FILE2, 503, times=2)
    download_shard(TINY_REPO, shard(2, 3), cache_dir)  # two 503s, then the file

    hub.fail(FILE3, 503, times=fetch.MAX_STALLED_ATTEMPTS)
    with pytest.raises(DownloadError, match=f"{FILE3}: download failed 5 times: HTTP 503"):
        download_shard(TINY_REPO, shard(4, 5), cache_dir)


def test_a_refused_download_fails_at_once(hub: HubServer, cache_dir: Path) -> None:
    hub.fail(FILE2, 403)
    with pytest.raises(DownloadError, match="403"):
        download_shard(TINY_REPO, shard(2, 3), cache_dir)
    assert len([e for e in hub.requests(server="cdn") if e.filename == FILE2]) == 1


@pytest.mark.parametrize("commit", ["../../../../escaped", "A" * 40, "abc123", "0" * 41])
def test_a_commit_that_is_not_a_hex_sha1_is_refused(
    hub: HubServer, cache_dir: Path, commit: str
) -> None:
    """The commit names a folder of the cache: a hostile hub must not pick it."""
    hub.falsify_listing(TINY_REPO, commit=commit)

    with pytest.raises(DownloadError, match="not a sha1 in hex"):
        download_shard(TINY_REPO, shard(2, 3), cache_dir)
    assert not (cache_dir.parent / "escaped").exists()
    assert not list(cache_dir.parent.rglob("snapshots/*"))
    assert hub.downloaded_files() == set()


@pytest.mark.parametrize(
    ("name", "etag"),
    [
        (FILE2, "../../../escaped"),  # LFS: a sha256
        (FILE2, "f" * 40),  # a sha1 where a sha256 belongs
        ("config.json", "../../escaped"),  # a git blob id
        ("config.json", "F" * 40),
    ],
)
def test_a_file_hash_that_is_not_hex_is_refused(
    hub: HubServer, cache_dir: Path, name: str, etag: str
) -> None:
    """The hash names the blob file: a hostile hub must not pick the path."""
    hub.falsify_listing(TINY_REPO, etags={name: etag})

    expected = f"the hub gave '{re.escape(etag)}' as the .* of {name}"
    with pytest.raises(DownloadError, match=expected):
        download_shard(TINY_REPO, shard(2, 3), cache_dir)
    assert not list(cache_dir.parent.rglob("*escaped*"))
    assert hub.downloaded_files() == set()


def test_a_body_longer_than_advertised_is_cut_at_the_size(
    hub: HubServer, cache_dir: Path, tiny_repo_dir: Path
) -> None:
    """A server sending 64 MB past the end of the file (twice) does not fill
    the disk: the download stops at the listed size, and the bytes it kept are
    the file."""
    hub.overlong(FILE2, extra=64 << 20, times=2)
    hub.overlong("config.json", extra=64 << 20, times=2)

    snapshot = download_shard(TINY_REPO, shard(2, 3), cache_dir)

    assert same_content(snapshot, tiny_repo_dir, FILE2)
    assert same_content(snapshot, tiny_repo_dir, "config.json")
    gets = [e for e in hub.requests(method="GET") if e.filename == FILE2 and e.body_bytes]
    assert len(gets) == 1  # the first answer was enough
    assert hub.bytes_served(FILE2) < (tiny_repo_dir / FILE2).stat().st_size + (32 << 20)
