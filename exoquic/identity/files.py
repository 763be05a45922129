"""Private files in the node's home: written atomically, readable only by their owner.

The only module of `identity/` that touches the file system besides the
callers that pass it paths (keys and trust store); no sockets, no trio.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path


def write_private_file(path: Path, data: bytes, *, replace: bool) -> bool:
    """Write `data` to `path` with mode 0600 so that readers see the old file or
    the whole new one, never a torn one (temp file + fsync + rename + fsync dir).

    With `replace=False` an existing file wins (returns False and writes
    nothing): two processes creating the same file at once agree on one.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file with mode 0600, so the data is never exposed.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp_file:
            tmp_file.write(data)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # unlike rename, link refuses to clobber
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(path.parent)
    return True


def loose_permissions(path: Path) -> bool:
    """True when group or others may read or write the file (POSIX only)."""
    if os.name != "posix":
        return False
    return bool(path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))


def _fsync_dir(directory: Path) -> None:
    # The rename is only durable once the directory entry is on disk.
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
