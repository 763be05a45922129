"""Option helpers that several commands share: argument types and the model options."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable

from exoquic import defaults

# What `register(commands)` receives: `parser.add_subparsers()`'s result.
Subcommands = argparse._SubParsersAction

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """`--model`, `--engine`, `--weights`, `--max-context` (`exoquic up` and `exoquic run`)."""
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
        "--weights",
        default="auto",
        choices=("auto", "q8_0", "q4_k", "q4_0", "q4_1", "keep", "f32"),
        help="what a safetensors model's 16-bit matrices become in memory (auto: Q8_0, about "
        "a byte a parameter; q4_k: about 4.5 bits; keep: 16-bit; f32). GGUF and "
        "mlx-community weights are used as they are",
    )
    parser.add_argument(
        "--max-context",
        type=int,
        default=defaults.MAX_CONTEXT,
        metavar="TOKENS",
        help=f"longest prompt + reply a request may reach (default: {defaults.MAX_CONTEXT})",
    )


def add_local_api_options(parser: argparse.ArgumentParser, route: str) -> None:
    """`--api-host`, `--api-port` (the node a client command asks, see
    `local_api.base_url`) and `--json` (print what `route` answered as it is)."""
    parser.add_argument(
        "--api-host",
        help="the node's API address (default: the node running in this home, "
        f"else {defaults.API_HOST})",
    )
    parser.add_argument(
        "--api-port",
        type=int,
        help=f"the node's API port (default: as for --api-host, {defaults.API_PORT})",
    )
    parser.add_argument("--json", action="store_true", help=f"print the raw {route} JSON")


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


def parse_size(text: str) -> int:
    """`"512M"`, `"1.5G"`, `"200MiB"`, `"1000000"` -> bytes (binary multiples)."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 2G)")
    number, unit = match.groups()
    scale = 1024 ** "kmgt".find(unit.lower()) * 1024 if unit else 1
    return int(float(number) * scale)
