"""Models from the Hugging Face hub: fetch only a shard's files (or, for a single-file
GGUF, only its byte ranges), resumably and verified.

The names below load on first use, so that `exoquic --help` and commands that
never download do not pay for importing huggingface_hub and its HTTP stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from exoquic.download.cache import cached_models, default_cache_dir
    from exoquic.download.errors import (
        DownloadCancelled,
        DownloadError,
        IntegrityError,
        ModelNotCachedError,
    )
    from exoquic.download.gguf import cached_gguf, download_gguf
    from exoquic.download.hub import (
        cached_shard,
        download_model,
        download_shard,
        download_shard_async,
    )
    from exoquic.download.progress import DownloadProgress, ProgressCallback, terminal_progress

_HOMES = {
    "cached_models": "cache",
    "default_cache_dir": "cache",
    "DownloadCancelled": "errors",
    "DownloadError": "errors",
    "IntegrityError": "errors",
    "ModelNotCachedError": "errors",
    "cached_gguf": "gguf",
    "download_gguf": "gguf",
    "cached_shard": "hub",
    "download_model": "hub",
    "download_shard": "hub",
    "download_shard_async": "hub",
    "DownloadProgress": "progress",
    "ProgressCallback": "progress",
    "terminal_progress": "progress",
}
__all__ = [
    "DownloadCancelled",
    "DownloadError",
    "DownloadProgress",
    "IntegrityError",
    "ModelNotCachedError",
    "ProgressCallback",
    "cached_gguf",
    "cached_models",
    "cached_shard",
    "default_cache_dir",
    "download_gguf",
    "download_model",
    "download_shard",
    "download_shard_async",
    "terminal_progress",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
