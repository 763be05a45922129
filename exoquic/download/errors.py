"""Errors raised while downloading models from the Hugging Face hub."""

from __future__ import annotations

from exoquic.models.errors import ModelError


class DownloadError(ModelError):
    """A model could not be downloaded (hub unreachable, repo or file missing, refused)."""


class IntegrityError(DownloadError):
    """A downloaded file's hash differs from the hub's, even after fetching it again."""


class ModelNotCachedError(DownloadError):
    """Offline, and the cache lacks files the shard needs (listed in `missing`)."""

    def __init__(self, repo_id: str, revision: str, missing: list[str]) -> None:
        self.repo_id = repo_id
        self.revision = revision
        self.missing = missing
        listed = ", ".join(missing)
        super().__init__(
            f"{repo_id}@{revision} is not fully cached and the hub is not used "
            f"(offline mode, HF_HUB_OFFLINE=1, or unreachable); missing: {listed}. "
            "Download it once online: `exoquic models download "
            f"{repo_id}`."
        )


class DownloadCancelled(DownloadError):
    """The download was stopped on request; partial files are kept for a later resume."""
