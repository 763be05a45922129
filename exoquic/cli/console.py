"""The stderr console that logs and spinners share."""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from exoquic.terminal import Spinner


@functools.cache
def log_console() -> Console:
    """The stderr console that logs and spinners share (one, so they do not garble)."""
    from rich.console import Console

    return Console(stderr=True)


@contextlib.contextmanager
def spinner(text: str) -> Iterator[Spinner | None]:
    """A spinner on stderr while the block runs, if stderr is a terminal."""
    console = log_console()
    if not console.is_terminal:
        yield None
        return
    from exoquic.terminal import Spinner

    shown = Spinner(console, text)
    shown.start()
    try:
        yield shown
    finally:
        shown.stop()


def setup_logging(verbose: bool, quiet: bool = False) -> None:
    """Debug logs with -v; without it, INFO, or only warnings for `quiet` commands
    (`exoquic run`, whose spinner says what happens)."""
    from rich.logging import RichHandler

    # Logs go to stderr, so answers on stdout (`exoquic run`) stay clean.
    handler = RichHandler(console=log_console(), rich_tracebacks=True, show_path=verbose)
    quiet_level = logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=logging.DEBUG if verbose else quiet_level,
        format="%(message)s",
        datefmt="[%X]",
        handlers=[handler],
    )
    for noisy in ("hypercorn.access", "quic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def print_error(command: str, message: object) -> None:
    """`exoquic COMMAND: message` on stderr."""
    print(f"exoquic {command}: {message}", file=sys.stderr, flush=True)
