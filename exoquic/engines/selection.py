"""Choosing an engine for `--engine auto|tinygrad|mlx`."""

from __future__ import annotations

import logging
import platform

log = logging.getLogger(__name__)

ENGINES = ("tinygrad", "mlx")


def is_apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def pick_engine(requested: str) -> str:
    """MLX on Apple silicon; tinygrad elsewhere when it can compile; else MLX on CPU."""
    if requested in ENGINES:
        return requested
    if requested != "auto":
        raise ValueError(f"unknown engine {requested!r}; choose auto, {', '.join(ENGINES)}")
    if is_apple_silicon():
        return "mlx"
    from exoquic.engines.tinygrad import tinygrad_available

    reason = tinygrad_available()
    if reason is None:
        return "tinygrad"
    log.warning(
        "tinygrad cannot run here (%s); falling back to MLX on the CPU, which is slow", reason
    )
    return "mlx"
