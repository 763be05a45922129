"""`exoquic run PROMPT`: answer one prompt in the terminal and exit."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from exoquic.cli.console import spinner
from exoquic.cli.options import Subcommands, add_model_options, bounded

if TYPE_CHECKING:
    from exoquic.terminal import Spinner


def register(commands: Subcommands) -> None:
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
        model=args.model,
        engine=args.engine,
        max_context=args.max_context,
        weights=args.weights,
        warm_up=False,
    )
    messages = [{"role": "system", "content": args.system}] if args.system else []
    messages.append({"role": "user", "content": args.prompt})
    question = Question(messages, args.temperature, args.top_p, args.max_tokens, args.seed)
    trio.run(answer_once, settings, question, status)
    return 0
