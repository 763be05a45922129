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
import re
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
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-\d+/(\d+)$")

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


def fetch_range(
    url: str,
    part: Path,
    remote: RemoteFile,
    start: int,
    end: int,
    headers: dict[str, str],
    report: Report,
) -> None:
    """Make `part` hold bytes `start..end` (end exclusive) of `remote`, continuing
    what an earlier attempt left in it. Nothing is verified against the hub's
    hash here (it covers the whole file); the server's Content-Range must name
    the asked-for offset and the listed file size."""
    if not 0 <= start <= end <= remote.size:
        raise ValueError(f"bytes {start}..{end} are not within {remote.name} ({remote.size})")
    _transfer(url, part, remote, headers, report, start=start, end=end)


def _transfer(
    url: str,
    partial: Path,
    remote: RemoteFile,
    headers: dict[str, str],
    report: Report,
    start: int = 0,
    end: int | None = None,
) -> None:
    """Grow `partial` to the range's size, retrying transient failures with Range requests."""
    size = (remote.size if end is None else end) - start
    stalled = 0
    while (have := _size(partial)) < size:
        try:
            _get(url, partial, _Span(remote, start, have, size), headers, report)
        except (httpx2.TransportError, _RetryableStatus) as e:
            stalled = 0 if _size(partial) > have else stalled + 1
            if stalled >= MAX_STALLED_ATTEMPTS:
                raise DownloadError(f"{remote.name}: download failed {stalled} times: {e}") from e
            log.info("%s: %s; resuming at byte %d", remote.name, e, start + _size(partial))
            time.sleep(RETRY_DELAY_S * stalled)
    # Writes stop at the size, so the file is never longer than asked for.


class _RetryableStatus(Exception):
    pass


@dataclass(frozen=True)
class _Span:
    """What one GET asks for: bytes `start + have .. start + size` of `remote`."""

    remote: RemoteFile
    start: int
    have: int
    size: int

    @property
    def whole_file(self) -> bool:
        return self.start == 0 and self.size == self.remote.size

    def range_header(self) -> str | None:
        first = self.start + self.have
        if self.whole_file:
            return f"bytes={first}-" if first else None
        return f"bytes={first}-{self.start + self.size - 1}"


def _get(url: str, partial: Path, span: _Span, headers: dict[str, str], report: Report) -> None:
    """One GET of the span's missing bytes, appended to `partial`, never past the
    span's size (a server that sends more, by mistake or to fill the disk, is cut off)."""
    request_headers = dict(headers)
    if (wanted := span.range_header()) is not None:
        request_headers["Range"] = wanted
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
        mode = _write_mode(response.status_code, response.headers.get("Content-Range"), span)
        with partial.open(mode) as f:
            for chunk in response.iter_bytes():
                f.write(chunk[: span.size - f.tell()])
                report(f.tell())
                if f.tell() >= span.size:
                    break  # closing the response drops whatever else it carries


def _write_mode(status: int, content_range: str | None, span: _Span) -> str:
    """Append for a 206 that starts where asked; start over for a 200 (a server
    that ignores Range sends the whole file), which only works from byte 0."""
    first = span.start + span.have
    if status == 206:
        match = _CONTENT_RANGE.match(content_range or "")
        if not match or int(match.group(1)) != first or int(match.group(2)) != span.remote.size:
            raise DownloadError(
                f"{span.remote.name}: asked for bytes from {first} of a {span.remote.size}-byte "
                f"file, the server sent {content_range!r}"
            )
        return "ab"
    if span.start:
        raise DownloadError(
            f"{span.remote.name}: the server ignores Range requests, so a slice of the file "
            "cannot be fetched"
        )
    return "wb"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
