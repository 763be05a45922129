"""Byte-range shard downloads of a single-file GGUF, against the local hub."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from fixtures.hub_gguf import GGUF_FILE, GGUF_LAYERS, GGUF_REPO
from fixtures.hub_server import HubServer

from exoquic.download import gguf as gguf_download
from exoquic.download.errors import DownloadError, ModelNotCachedError
from exoquic.download.gguf import cached_gguf, download_gguf
from exoquic.models.gguf_file import GGUFFile
from exoquic.models.gguf_loader import load_gguf_shard, read_gguf_config
from exoquic.models.gguf_shard import shard_info
from exoquic.models.shard import Shard
from exoquic.models.weights import QuantizedTensor, ShardWeights


def _layer_bytes(full: GGUFFile, layers: range) -> int:
    """Bytes of the tensors of `layers`, read from the full file's own header."""
    prefixes = tuple(f"blk.{i}." for i in layers)
    return sum(t.nbytes for t in full.tensors.values() if t.name.startswith(prefixes))


def _assert_same_weights(a: ShardWeights, b: ShardWeights) -> None:
    assert a.config == b.config
    assert a.tensors.keys() == b.tensors.keys()
    for name, x in a.tensors.items():
        y = b.tensors[name]
        if isinstance(x, QuantizedTensor):
            assert isinstance(y, QuantizedTensor)
            assert (x.kind, x.shape) == (y.kind, y.shape)
            np.testing.assert_array_equal(x.blocks, y.blocks)
        else:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_third_of_the_layers_fetches_only_those_bytes(
    gguf_hub: HubServer, gguf_repo_dir: Path, cache_dir: Path
) -> None:
    full = GGUFFile.open(gguf_repo_dir / GGUF_FILE)
    path = download_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=(2, 3))

    served = gguf_hub.bytes_served(GGUF_FILE)
    header = full.data_start
    # The header is read in one range of HEADER_FIRST_READ (it is ~1.6 MB here); the
    # rest is the two layers' tensors and at most the alignment padding between them.
    assert served <= _layer_bytes(full, range(2, 4)) + gguf_download.HEADER_FIRST_READ
    assert served - gguf_download.HEADER_FIRST_READ <= _layer_bytes(full, range(2, 4)) + 32 * 24
    assert header < gguf_download.HEADER_FIRST_READ
    assert served < 0.5 * full.size
    shard = GGUFFile.open(path)
    assert shard.size < 0.3 * full.size
    info = shard_info(shard.metadata, str(path))
    assert info is not None and (info.start_layer, info.end_layer) == (2, 3)
    assert info.source_size == full.size
    assert info.source_sha256 == gguf_hub.repos[GGUF_REPO].files[GGUF_FILE].sha256


@pytest.mark.parametrize("layers", [(0, 1), (2, 3), (4, 5)])
def test_a_shard_gguf_loads_the_same_tensors_as_the_full_file(
    gguf_hub: HubServer, gguf_repo_dir: Path, cache_dir: Path, layers: tuple[int, int]
) -> None:
    path = download_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=layers)
    shard = Shard("small", *layers, GGUF_LAYERS)

    _assert_same_weights(
        load_gguf_shard(path, shard), load_gguf_shard(gguf_repo_dir / GGUF_FILE, shard)
    )
    # A middle shard has no output.weight, yet its config still says "not tied".
    assert read_gguf_config(path) == read_gguf_config(gguf_repo_dir / GGUF_FILE)
    names = set(GGUFFile.open(path).tensors)
    assert ("token_embd.weight" in names) == (layers[0] == 0)
    assert ("output.weight" in names) == (layers[1] == GGUF_LAYERS - 1)


def test_a_shard_refuses_layers_it_does_not_hold(gguf_hub: HubServer, cache_dir: Path) -> None:
    path = download_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=(2, 3))
    with pytest.raises(Exception, match=r"holds layers 2\.\.3 only, not 3\.\.4"):
        load_gguf_shard(path, Shard("small", 3, 4, GGUF_LAYERS))


def test_a_cut_connection_resumes_from_what_is_on_disk(
    gguf_hub: HubServer, gguf_repo_dir: Path, cache_dir: Path
) -> None:
    download_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=(4, 5))  # caches the header
    gguf_hub.clear_log()
    kept = 100_000
    gguf_hub.cut_after(GGUF_FILE, kept)  # the connection drops mid-piece ...
    gguf_hub.fail(GGUF_FILE, status=403)  # ... and the retry is refused: the run fails
    with pytest.raises(DownloadError):
        download_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=(2, 3), max_workers=1)
    first = [e for e in gguf_hub.requests(method="GET", server="cdn") if e.body_bytes]
    assert [e.body_bytes for e in first] == [kept]
    start = int(first[0].range.removeprefix("bytes=").split("-")[0])  # type: ignore[union-attr]
    gguf_hub.clear_log()

    (part,) = cache_dir.rglob("*.parts/*")
    assert part.stat().st_size == kept
    path = download_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=(2, 3), max_workers=1)

    again = [e for e in gguf_hub.requests(method="GET", server="cdn") if e.body_bytes]
    assert again[0].range is not None and again[0].range.startswith(f"bytes={start + kept}-")
    full = GGUFFile.open(gguf_repo_dir / GGUF_FILE)
    assert sum(e.body_bytes for e in again) <= _layer_bytes(full, range(2, 4)) + 32 * 24 - kept
    shard = Shard("small", 2, 3, GGUF_LAYERS)
    _assert_same_weights(
        load_gguf_shard(path, shard), load_gguf_shard(gguf_repo_dir / GGUF_FILE, shard)
    )


def test_a_shard_downloads_in_parallel_pieces(
    gguf_hub: HubServer, gguf_repo_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    download_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=(4, 5))  # caches the header
    gguf_hub.clear_log()
    monkeypatch.setattr(gguf_download, "PIECE_BYTES", 512 * 1024)
    gguf_hub.rate = 20e6  # slow enough for the pieces' requests to overlap
    path = download_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=(0, 1), max_workers=4)

    gets = [e for e in gguf_hub.requests(method="GET", server="cdn") if e.body_bytes]
    spans = sorted((_first(e.range or ""), _first(e.range or "") + e.body_bytes) for e in gets)
    assert len(spans) >= 10 and all(end - start <= 512 * 1024 for start, end in spans)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))  # no byte twice
    most_at_once = max(sum(o.started < e.finished and e.started < o.finished for o in gets)
                       for e in gets)  # fmt: skip
    assert most_at_once > 1
    shard = Shard("small", 0, 1, GGUF_LAYERS)
    _assert_same_weights(
        load_gguf_shard(path, shard), load_gguf_shard(gguf_repo_dir / GGUF_FILE, shard)
    )


def test_a_part_longer_than_its_piece_is_fetched_again(
    gguf_hub: HubServer, gguf_repo_dir: Path, cache_dir: Path
) -> None:
    download_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=(4, 5))
    gguf_hub.cut_after(GGUF_FILE, 1000)
    gguf_hub.fail(GGUF_FILE, status=403)
    with pytest.raises(DownloadError):
        download_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=(2, 3), max_workers=1)
    (part,) = cache_dir.rglob("*.parts/*")
    part.write_bytes(bytes(50_000_000))  # longer than any piece: not a download of ours

    path = download_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=(2, 3), max_workers=1)

    shard = Shard("small", 2, 3, GGUF_LAYERS)
    _assert_same_weights(
        load_gguf_shard(path, shard), load_gguf_shard(gguf_repo_dir / GGUF_FILE, shard)
    )


def test_a_header_longer_than_the_first_read_takes_more_ranges(
    gguf_hub: HubServer, gguf_repo_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gguf_download, "HEADER_FIRST_READ", 64 * 1024)
    path = download_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=(2, 3))

    header = GGUFFile.open(gguf_repo_dir / GGUF_FILE).data_start
    ranges = [e.range for e in gguf_hub.requests(method="GET", server="cdn") if e.body_bytes]
    header_ranges = [r for r in ranges if r and r.startswith("bytes=") and _first(r) < header]
    assert len(header_ranges) >= 3  # 64 KiB, then doubling up to the ~1.6 MB header
    assert header_ranges[0] == "bytes=0-65535"
    assert _first(header_ranges[1]) == 65536  # continued, not fetched again
    assert shard_info(GGUFFile.open(path).metadata, str(path)) is not None


def test_all_layers_fetch_the_whole_file_and_check_its_sha256(
    gguf_hub: HubServer, gguf_repo_dir: Path, cache_dir: Path
) -> None:
    path = download_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=(0, GGUF_LAYERS - 1))
    assert path.read_bytes() == (gguf_repo_dir / GGUF_FILE).read_bytes()
    gguf_hub.clear_log()
    # With the whole (verified) file cached, a slice is served from it, not fetched.
    assert download_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=(2, 3)) == path
    assert gguf_hub.bytes_served(GGUF_FILE) == 0


def test_a_corrupt_whole_file_is_refused(gguf_hub: HubServer, cache_dir: Path) -> None:
    gguf_hub.corrupt(GGUF_FILE, times=2)
    with pytest.raises(DownloadError, match="does not match the hub's sha256"):
        download_gguf(GGUF_REPO, GGUF_FILE, cache_dir)


def test_offline_a_cached_shard_serves_the_layers_it_holds(
    gguf_hub: HubServer, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = download_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=(2, 3))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert download_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=(2, 2)) == path
    assert cached_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=(3, 3)) == path
    with pytest.raises(ModelNotCachedError, match=r"layers 3-4"):
        download_gguf(GGUF_REPO, GGUF_FILE, cache_dir, layers=(3, 4))


def test_a_file_name_outside_the_repo_is_refused(gguf_hub: HubServer, cache_dir: Path) -> None:
    with pytest.raises(DownloadError, match="not a GGUF file name"):
        download_gguf(GGUF_REPO, "../x.gguf", cache_dir, layers=(0, 1))
    with pytest.raises(DownloadError, match=r"GGUF files: \['small-llama-Q4_K_M.gguf'\]"):
        download_gguf(GGUF_REPO, "other.gguf", cache_dir, layers=(0, 1))


def _first(range_header: str) -> int:
    return int(range_header.removeprefix("bytes=").split("-")[0])


def test_a_file_that_is_not_a_gguf_is_refused_and_not_kept(
    hub: HubServer, cache_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "bad-repo"
    folder.mkdir()
    (folder / "bad.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 64)
    hub.add_repo("exoquic-test/bad", folder)
    with pytest.raises(DownloadError, match=r"exoquic-test/bad: bad\.gguf"):
        download_gguf("exoquic-test/bad", "bad.gguf", cache_dir, layers=(0, 0))
    assert not list(cache_dir.rglob("*.header"))
