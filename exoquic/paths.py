"""Where exoquic keeps its files: `$EXOQUIC_HOME`, else the platform's config dir."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs


def home() -> Path:
    """The node's home directory (identity key, trust store, model cache)."""
    override = os.environ.get("EXOQUIC_HOME")
    path = Path(override) if override else Path(platformdirs.user_config_dir("exoquic"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def models_dir() -> Path:
    path = home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
