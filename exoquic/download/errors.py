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
        advice = f"Download it once online: `exoquic models download {repo_id}`."
        super().__init__(f"{self.fact}. {advice}")

    @property
    def fact(self) -> str:
        """What is wrong, without the advice (which `exoquic models download` itself
        must not give)."""
        return (
            f"{self.repo_id}@{self.revision} is not fully cached and the hub is not used "
            f"(offline mode, HF_HUB_OFFLINE=1, or unreachable); missing: {', '.join(self.missing)}"
        )


class HubUnreachableError(DownloadError):
    """The hub did not answer, and the cache lacks what was asked for."""


class DownloadCancelled(DownloadError):
    """The download was stopped on request; partial files are kept for a later resume."""
