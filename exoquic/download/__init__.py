"""Models from the Hugging Face hub: fetch only a shard's files, resumably and verified."""

from exoquic.download.cache import cached_models, default_cache_dir
from exoquic.download.errors import (
    DownloadCancelled,
    DownloadError,
    IntegrityError,
    ModelNotCachedError,
)
from exoquic.download.hub import (
    cached_shard,
    download_model,
    download_shard,
    download_shard_async,
)
from exoquic.download.progress import DownloadProgress, ProgressCallback, terminal_progress

__all__ = [
    "DownloadCancelled",
    "DownloadError",
    "DownloadProgress",
    "IntegrityError",
    "ModelNotCachedError",
    "ProgressCallback",
    "cached_models",
    "cached_shard",
    "default_cache_dir",
    "download_model",
    "download_shard",
    "download_shard_async",
    "terminal_progress",
]
