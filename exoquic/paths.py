"""Where exoquic keeps its files: `$EXOQUIC_HOME`, else the platform's config dir."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from exoquic.errors import StartupError


def home() -> Path:
    """The node's home directory (identity key, trust store, model cache)."""
    override = os.environ.get("EXOQUIC_HOME")
    path = Path(override) if override else Path(platformdirs.user_config_dir("exoquic"))
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        where = "EXOQUIC_HOME" if override else "the home directory"
        raise StartupError(f"cannot use {where} {path}: {exc.strerror or exc}") from exc
    return path


def models_dir() -> Path:
    path = home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
