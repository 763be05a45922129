"""Create an engine by name, importing its (heavy) backend only when asked for."""

from __future__ import annotations

import importlib
import os

from exoquic.engines.base import Engine, EngineError

THREADS_VARIABLE = "EXOQUIC_ENGINE_THREADS"

# name -> (module, class); the modules import tinygrad or mlx, so they load lazily.
_ENGINES: dict[str, tuple[str, str]] = {
    "tinygrad": ("exoquic.engines.tinygrad.engine", "TinygradEngine"),
    "mlx": ("exoquic.engines.mlx.engine", "MLXEngine"),
}


def engine_names() -> tuple[str, ...]:
    """Every engine name `create_engine` accepts."""
    return tuple(_ENGINES)


def create_engine(name: str, max_context: int) -> Engine:
    """A new, empty engine of the named kind (`tinygrad` or `mlx`)."""
    try:
        module_name, class_name = _ENGINES[name]
    except KeyError:
        raise EngineError(f"unknown engine {name!r}; choose one of {', '.join(_ENGINES)}") from None
    engine_class: type[Engine] = getattr(importlib.import_module(module_name), class_name)
    return engine_class(max_context=max_context)


def engine_threads_setting() -> int | None:
    """CPU threads per engine step from `EXOQUIC_ENGINE_THREADS` (None: the engine's
    default). Raises ValueError naming the variable when it is not 1 to 64."""
    configured = os.environ.get(THREADS_VARIABLE, "").strip()
    if not configured:
        return None
    if not configured.isdigit() or not 1 <= int(configured) <= 64:
        raise ValueError(
            f"{THREADS_VARIABLE} must be a whole number from 1 to 64, not {configured!r}"
        )
    return int(configured)
