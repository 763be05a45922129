"""The `exoquic` command line."""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from exoquic import __version__
from exoquic.api.limits import DEFAULT_MAX_QUEUED, DEFAULT_MAX_REQUESTS, DEFAULT_QUEUE_TIMEOUT_S
from exoquic.download.cli import add_models_command, add_pull_command
from exoquic.local_api import DEFAULT_API_HOST, DEFAULT_API_PORT
from exoquic.pairing.cli import add_pair_command, add_trust_command
from exoquic.ring_cli import add_cluster_options, add_status_command, cluster_settings

if TYPE_CHECKING:
    from rich.console import Console

    from exoquic.terminal import Spinner


Handler = Callable[[argparse.Namespace], int]


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
        problem = None if isinstance(exc, SystemExit) else startup_problem(exc)
        if problem is None or args.verbose:
            raise
        print(f"exoquic: {problem}", file=sys.stderr)
        status = 1
    finally:
        stop_child_processes()
    exit_now(status)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exoquic",
        description="Run a large language model across the devices you own.",
    )
    parser.add_argument("--version", action="version", version=f"exoquic {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    add_up(commands)
    add_run(commands)
    add_models_command(commands)
    add_pull_command(commands)
    add_token(commands)
    add_id(commands)
    add_pair_command(commands)
    add_trust_command(commands)
    add_status_command(commands)
    return parser


def add_model_options(parser: argparse.ArgumentParser) -> None:
    from exoquic.models.registry import DEFAULT_MODEL_ID

    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL_ID,
        help=f"model id, GGUF file or Hugging Face directory (default: {DEFAULT_MODEL_ID})",
    )
    parser.add_argument(
        "--engine",
        default="auto",
        choices=("auto", "tinygrad", "mlx"),
        help="inference engine (auto: MLX on Apple silicon, tinygrad elsewhere)",
    )
    parser.add_argument(
        "--max-context",
        type=int,
        default=2048,
        metavar="TOKENS",
        help="longest prompt + reply a request may reach (default: 2048)",
    )


def add_up(commands: argparse._SubParsersAction) -> None:
    up = commands.add_parser("up", help="start a node and serve the API")
    add_model_options(up)
    up.add_argument(
        "--api-host",
        "--host",
        default=DEFAULT_API_HOST,
        dest="api_host",
        help=f"address the HTTP API listens on (default: {DEFAULT_API_HOST})",
    )
    up.add_argument(
        "--api-port",
        "--port",
        type=int,
        default=DEFAULT_API_PORT,
        dest="api_port",
        help=f"HTTP API port (default: {DEFAULT_API_PORT})",
    )
    up.add_argument(
        "--insecure-api",
        action="store_true",
        help="allow an API beyond loopback without an API key",
    )
    up.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let this web origin call the API from a browser (repeatable)",
    )
    add_admission_options(up)
    add_cluster_options(up)
    up.set_defaults(handler=cmd_up)


def add_admission_options(up: argparse.ArgumentParser) -> None:
    """`--max-requests`, `--queue-timeout`, `--max-queued` (see exoquic.api.admission)."""
    up.add_argument(
        "--max-requests",
        type=int,
        default=DEFAULT_MAX_REQUESTS,
        metavar="N",
        help="generations this node's API runs at once; beyond that HTTP 429 "
        f"(0: no limit; default: {DEFAULT_MAX_REQUESTS})",
    )
    up.add_argument(
        "--queue-timeout",
        type=float,
        default=DEFAULT_QUEUE_TIMEOUT_S,
        metavar="SECONDS",
        help="how long a request beyond --max-requests waits for a slot before its 429 "
        f"(default: {DEFAULT_QUEUE_TIMEOUT_S:g}, refuse at once)",
    )
    up.add_argument(
        "--max-queued",
        type=int,
        default=DEFAULT_MAX_QUEUED,
        metavar="N",
        help=f"requests that may wait at once with --queue-timeout (default: {DEFAULT_MAX_QUEUED})",
    )


def add_run(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="answer one prompt in the terminal and exit")
    add_model_options(run)
    run.add_argument("prompt", help="the user message")
    run.add_argument("--system", help="system prompt (default: the model's own)")
    run.add_argument(
        "--max-tokens",
        type=bounded(int, 1, None),
        help="longest reply in tokens (default: the model's, 1024)",
    )
    run.add_argument(
        "--temperature",
        type=bounded(float, 0.0, 2.0),
        help="0 to 2, 0 is greedy (default: the model's recommendation)",
    )
    run.add_argument(
        "--top-p",
        type=bounded(float, 0.0, 1.0, low_open=True),
        help="0 to 1 (default: the model's recommendation)",
    )
    run.add_argument("--seed", type=int, help="same seed, same answer")
    run.set_defaults(handler=cmd_run, quiet=True)


def bounded(
    kind: Callable[[str], float], low: float, high: float | None, low_open: bool = False
) -> Callable[[str], float]:
    """An argparse type: `kind(text)` between `low` and `high` (None: no limit)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        too_low = value <= low if low_open else value < low
        if too_low or (high is not None and value > high):
            above = f"above {low:g}" if low_open else f"at least {low:g}"
            limit = above if high is None else f"{above} and at most {high:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {limit}")
        return value

    return parse


def add_token(commands: argparse._SubParsersAction) -> None:
    token = commands.add_parser("token", help="create a new API key for this node")
    token.set_defaults(handler=cmd_token)


def add_id(commands: argparse._SubParsersAction) -> None:
    show = commands.add_parser(
        "id",
        help="show this device's node id and key fingerprint (starts no node)",
        description="Print this device's node id and the fingerprint of its key, as other "
        "devices show them in `exoquic trust list` (the key is created if there is none yet).",
    )
    show.set_defaults(handler=cmd_id)


def cmd_id(args: argparse.Namespace) -> int:
    from exoquic import paths
    from exoquic.identity.keys import load_or_create_identity
    from exoquic.pairing.cli import key_fingerprint

    identity = load_or_create_identity()
    print(f"node id:          {identity.node_id}")
    print(f"key fingerprint:  {key_fingerprint(identity.public_key)}")
    print(f"home:             {paths.home()}")
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    import trio

    from exoquic.api.limits import AdmissionLimits
    from exoquic.api.security import InsecureBindError, TokenFileError, security_for_bind
    from exoquic.engines.registry import engine_threads_setting
    from exoquic.orchestration.node import NodeSettings
    from exoquic.serve import serve_node

    try:
        security = security_for_bind(
            args.api_host, insecure=args.insecure_api, origins=args.cors_origin
        )
    except (InsecureBindError, TokenFileError) as exc:
        print(f"exoquic: {exc}", file=sys.stderr)
        return 2
    try:
        cluster = cluster_settings(args)
        limits = AdmissionLimits(args.max_requests, args.max_queued, args.queue_timeout)
        engine_threads_setting()  # a bad EXOQUIC_ENGINE_THREADS stops here, not in the engine
    except ValueError as exc:
        print(f"exoquic: {exc}", file=sys.stderr)
        return 2
    settings = NodeSettings(model=args.model, engine=args.engine, max_context=args.max_context)
    trio.run(serve_node, settings, args.api_host, args.api_port, security, cluster, limits)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from exoquic.api.security import create_token, token_path

    token = create_token()
    print(token)
    print(
        f"saved to {token_path()}; clients send it as 'Authorization: Bearer <key>'",
        file=sys.stderr,
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    # The spinner runs from the start: imports alone take a while.
    with spinner(f"loading {args.model}") as status:
        return _run(args, status)


def _run(args: argparse.Namespace, status: Spinner | None) -> int:
    import trio

    from exoquic.answer import Question, answer_once
    from exoquic.orchestration.node import NodeSettings

    # tinygrad lowers kernels in a pool of spawned processes, each of which first
    # imports tinygrad (~3 s of CPU): worth it for a server's warm-up with nothing
    # compiled yet, but for one request it only delays the answer (5 s to the first
    # token instead of 2 s on two busy cores, kernels cached). PARALLEL=N overrides.
    os.environ.setdefault("PARALLEL", "0")
    # One request: warming up steps it will not use only delays its answer.
    settings = NodeSettings(
        model=args.model, engine=args.engine, max_context=args.max_context, warm_up=False
    )
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.prompt})
    question = Question(messages, args.temperature, args.top_p, args.max_tokens, args.seed)
    trio.run(answer_once, settings, question, status)
    return 0


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
