"""`exoquic`: builds the parser from the command modules and runs one command."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from exoquic import __version__
from exoquic.cli.console import setup_logging

Handler = Callable[[argparse.Namespace], int]

# The modules of exoquic.cli that register commands, in the order `exoquic --help`
# lists them. A new command is a module with `register(commands)` and one line here.
COMMANDS = (
    "up",
    "run",
    "models",
    "pull",
    "keys",
    "pair",
    "trust",
    "status",
    "ps",
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, getattr(args, "quiet", False))
    handler: Handler = args.handler
    # SIGTERM (systemd's stop, `kill`) stops a node like Ctrl-C until the
    # server installs its own graceful handler.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        status = handler(args)
    except KeyboardInterrupt:
        status = 130
    except BaseException as exc:
        status = 130 if _only_interrupts(exc) else _startup_failure(exc, args.verbose)
    finally:
        stop_child_processes()
    exit_now(status)


def _only_interrupts(exc: BaseException) -> bool:
    """A second Ctrl-C during the graceful stop (a terminal signals `uv run` and
    the node alike, and uv forwards its own) surfaces from a Trio nursery."""
    return isinstance(exc, BaseExceptionGroup) and exc.split(KeyboardInterrupt)[1] is None


def _startup_failure(exc: BaseException, verbose: bool) -> int:
    """A known startup mistake as one line (status 1); anything else re-raised."""
    problem = None if isinstance(exc, SystemExit) else startup_problem(exc)
    if problem is None or verbose:
        raise exc
    print(f"exoquic: {problem}", file=sys.stderr)
    return 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exoquic",
        description="Run a large language model across the devices you own.",
    )
    parser.add_argument("--version", action="version", version=f"exoquic {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__package__}.{name}").register(commands)
    return parser


def exit_now(status: int) -> None:
    """Exit, without waiting for an engine call still running: a load or kernel
    compile cut short by Ctrl-C cannot be interrupted, and nobody needs its result."""
    busy = [
        thread
        for thread in threading.enumerate()
        if thread is not threading.main_thread() and not thread.daemon and thread.is_alive()
    ]
    if not busy:
        sys.exit(status)
    logging.getLogger(__name__).debug("not waiting for %s", ", ".join(t.name for t in busy))
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def startup_problem(exc: BaseException) -> str | None:
    """The one-line message for a mistake the user can fix (a port in use, a bad
    --model, a broken file in the home), or None for a bug, which keeps its
    traceback. Looks inside the exception groups that trio nurseries raise."""
    from exoquic.errors import StartupError
    from exoquic.identity.keys import IdentityError
    from exoquic.identity.trust import TrustStoreError
    from exoquic.models.errors import ModelError
    from exoquic.topology import InsufficientMemoryError

    user_errors = (StartupError, ModelError, IdentityError, TrustStoreError,
                   InsufficientMemoryError)  # fmt: skip
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        found = exc.subgroup(lambda e: isinstance(e, user_errors))
        if found is None:
            return None
        exc = found.exceptions[0]
    return str(exc) if isinstance(exc, user_errors) else None


def stop_child_processes() -> None:
    """Leave no child process behind (tinygrad's compiler pool, if it was started)."""
    if "tinygrad.engine.worker" in sys.modules:
        from exoquic.engines.tinygrad.compile_pool import stop_compile_pool

        stop_compile_pool()
