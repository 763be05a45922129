"""Fetch one file from the hub into the cache: resumable, verified, published atomically.

Why not `hf_hub_download` for the transfer: in huggingface_hub 2.x it writes
to a process-unique temporary file and deletes it on failure, so a download
interrupted by a crash, Ctrl-C or a dead link starts over from byte 0 (and an
in-call retry loses up to 10 MB of buffered data). Multi-gigabyte shards over
home connections need better, so the bytes go to `blobs/{etag}.incomplete`,
which any later attempt continues with an HTTP `Range` request, and the file
only becomes a blob once its hash matches the one the hub published.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client; its session raises these
from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import WeakFileLock, get_session, hf_raise_for_status

from exoquic.download.errors import DownloadError, IntegrityError

log = logging.getLogger(__name__)

MAX_STALLED_ATTEMPTS = 5  # consecutive attempts that brought no new byte
RETRY_DELAY_S = 0.5
HASH_BLOCK = 1 << 20
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

Report = Callable[[int], None]
"""`report(bytes_on_disk)` after every chunk; raising from it stops the download."""


@dataclass(frozen=True)
class RemoteFile:
    """A file of a hub repository at one commit, as the hub describes it."""

    name: str
    size: int
    etag: str  # sha256 of the content for LFS files, else the git blob id (sha1)
    is_lfs: bool


def fetch_blob(
    url: str, blob: Path, lock: Path, remote: RemoteFile, headers: dict[str, str], report: Report
) -> None:
    """Make `blob` hold `remote`'s verified content, downloading what is missing.

    A partial file from an earlier attempt is continued. When the finished
    file's hash is wrong it is deleted and fetched once more from the start;
    a second mismatch raises IntegrityError.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    blob.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(lock):  # another process may be fetching the same blob
        if blob.exists():
            report(blob.stat().st_size)
            return
        partial = blob.with_name(blob.name + ".incomplete")
        for attempt in (1, 2):
            _transfer(url, partial, remote, headers, report)
            if digest_of(partial, remote.is_lfs) == remote.etag:
                partial.replace(blob)
                return
            partial.unlink()
            log.warning("%s: hash mismatch (attempt %d), fetching it again", remote.name, attempt)
            report(0)
    raise IntegrityError(
        f"{remote.name}: downloaded content does not match the hub's "
        f"{'sha256' if remote.is_lfs else 'git blob id'} {remote.etag} (tried twice)"
    )


def digest_of(path: Path, is_lfs: bool) -> str:
    """sha256 of the file (how the hub names LFS files), else its git blob id."""
    git_header = f"blob {path.stat().st_size}\0".encode()
    h = hashlib.sha256() if is_lfs else hashlib.sha1(git_header)
    with path.open("rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _transfer(
    url: str, partial: Path, remote: RemoteFile, headers: dict[str, str], report: Report
) -> None:
    """Grow `partial` to the file's size, retrying transient failures with Range requests."""
    stalled = 0
    while (have := _size(partial)) < remote.size:
        try:
            _get(url, partial, have, remote.size, headers, report)
        except (httpx2.TransportError, _RetryableStatus) as e:
            stalled = 0 if _size(partial) > have else stalled + 1
            if stalled >= MAX_STALLED_ATTEMPTS:
                raise DownloadError(f"{remote.name}: download failed {stalled} times: {e}") from e
            log.info("%s: %s; resuming at byte %d", remote.name, e, _size(partial))
            time.sleep(RETRY_DELAY_S * stalled)
    # Writes stop at the size, so the file is never longer than the hub said.


class _RetryableStatus(Exception):
    pass


def _get(
    url: str, partial: Path, have: int, size: int, headers: dict[str, str], report: Report
) -> None:
    """One GET from byte `have` on, appended to `partial`, never past byte `size`
    (a server that sends more, by mistake or to fill the disk, is cut off)."""
    request_headers = dict(headers)
    if have:
        request_headers["Range"] = f"bytes={have}-"
    with get_session().stream(
        "GET", url, headers=request_headers, timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT
    ) as response:
        if response.status_code == 416:  # our partial is longer than the file
            partial.unlink()
            return
        if response.status_code in _RETRY_STATUSES:
            raise _RetryableStatus(f"HTTP {response.status_code}")
        try:
            hf_raise_for_status(response)
        except HfHubHTTPError as e:
            raise DownloadError(f"{url}: {e}") from e
        # A server that ignores Range answers 200 with the whole file.
        mode = "ab" if response.status_code == 206 else "wb"
        with partial.open(mode) as f:
            for chunk in response.iter_bytes():
                f.write(chunk[: size - f.tell()])
                report(f.tell())
                if f.tell() >= size:
                    break  # closing the response drops whatever else it carries


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
