"""Create an engine by name, importing its (heavy) backend only when asked for."""

from __future__ import annotations

import importlib

from exoquic.engines.base import Engine, EngineError

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
