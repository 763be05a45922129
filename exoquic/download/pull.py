"""`exoquic pull NAME[:TAG]`: what a name means, and fetching it.

Names, tried in this order:

- a registry name (`smollm2-360m-instruct`, and the Ollama-style names the
  registry knows, such as `qwen2.5:7b`): its Q4_K_M GGUF when the registry names
  one, else its safetensors repository;
- `owner/repo/FILE.gguf`: that GGUF file of a hub repository;
- `owner/repo:TAG`: the repository's GGUF whose name carries the quantization
  `TAG` (`bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M`), as in Ollama's
  `hf.co/...` names (an `hf.co/` or `huggingface.co/` prefix is accepted);
- `owner/repo`: its safetensors when it has a `config.json`, else its only
  GGUF, else its Q4_K_M GGUF.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from exoquic.download.errors import DownloadError, HubUnreachableError
from exoquic.download.progress import ProgressCallback
from exoquic.models.gguf_file import GGUFFile
from exoquic.models.registry import ModelEntry, find_model
from exoquic.topology.fit import ModelFootprint

DEFAULT_QUANT = "Q4_K_M"  # what Ollama and most GGUF repositories offer first
_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$")  # llama.cpp's multi-file GGUFs
_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class PullTarget:
    """What a name resolved to: a GGUF file of a repository, or its safetensors."""

    repo_id: str
    filename: str | None  # None: the repository's safetensors
    tag: str | None = None  # a quantization to pick among the repository's GGUFs
    entry: ModelEntry | None = None  # the registry entry, when named from the registry

    @property
    def label(self) -> str:
        return f"{self.repo_id}/{self.filename}" if self.filename else self.repo_id


def parse_name(name: str) -> PullTarget:
    """The target a name means, before looking at the repository (pure)."""
    text = name.strip()
    entry = find_model(text)
    if entry is not None:
        if entry.gguf_repo and entry.gguf_file:
            return PullTarget(entry.gguf_repo, entry.gguf_file, entry=entry)
        return PullTarget(entry.hf_repo, None, entry=entry)
    for prefix in ("https://", "hf.co/", "huggingface.co/"):
        text = text.removeprefix(prefix)
    repo_part, _, tag = text.partition(":")
    parts = repo_part.split("/")
    repo = "/".join(parts[:2])
    if _REPO.match(repo) and ".." not in parts:
        if len(parts) == 2:
            return PullTarget(repo, None, tag or None)
        if repo_part.endswith(".gguf") and not tag:
            return PullTarget(repo, "/".join(parts[2:]))
    raise DownloadError(
        f"unknown model {name!r}: not a registry name (see `exoquic models list`), "
        "nor owner/repo, owner/repo:QUANT or owner/repo/FILE.gguf"
    )


def choose_file(target: PullTarget, files: Iterable[str]) -> PullTarget:
    """Pick what to fetch from the repository's file list (pure)."""
    names = set(files)
    if target.filename is not None:
        return target
    ggufs = sorted(f for f in names if f.endswith(".gguf") and not _SPLIT_GGUF.search(f))
    if target.tag is not None:
        return _with_file(target, _tagged(ggufs, target.tag), target.tag)
    if "config.json" in names and any(f.endswith(".safetensors") for f in names):
        return target
    if len(ggufs) == 1:
        return _with_file(target, ggufs, None)
    if ggufs:
        return _with_file(target, _tagged(ggufs, DEFAULT_QUANT), DEFAULT_QUANT)
    split = sorted(f for f in names if _SPLIT_GGUF.search(f))
    raise DownloadError(
        f"{target.repo_id} has neither safetensors (config.json) nor a single-file GGUF"
        + (f"; split GGUFs ({split[0]} ...) are not supported" if split else "")
    )


def resolve(target: PullTarget, revision: str = "main") -> PullTarget:
    """`choose_file` on the repository's listing (one hub API call) when no file is named."""
    from exoquic.download.hub import HubSettings, _HubUnreachable, list_repo

    if target.filename is not None:
        return target
    settings = HubSettings.from_env()
    try:
        listing = list_repo(target.repo_id, revision, settings)
    except _HubUnreachable as e:
        raise HubUnreachableError(
            f"cannot reach the hub at {settings.endpoint} to list {target.repo_id}: {e}"
        ) from e
    return choose_file(target, listing.files)


def _tagged(ggufs: list[str], tag: str) -> list[str]:
    # Q4_K must not match Q4_K_M: the tag stands between separators.
    pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(tag)}(?![A-Za-z0-9_])", re.IGNORECASE)
    return [f for f in ggufs if pattern.search(Path(f).name)]


def _with_file(target: PullTarget, matches: list[str], tag: str | None) -> PullTarget:
    if len(matches) != 1:
        what = f"a {tag} GGUF" if tag else "a GGUF"
        found = "none" if not matches else ", ".join(matches)
        raise DownloadError(
            f"{target.repo_id}: cannot pick {what} (matching files: {found}); "
            "name the file as owner/repo/FILE.gguf"
        )
    return PullTarget(target.repo_id, matches[0], target.tag, target.entry)


def footprint_of_gguf(gf: GGUFFile, model_id: str) -> ModelFootprint:
    """The memory a GGUF's model takes, from its header alone."""
    md = gf.metadata
    arch = md.get("general.architecture")
    layers: dict[int, int] = {}
    for info in gf.tensors.values():
        if match := _LAYER.match(info.name):
            index = int(match.group(1))
            layers[index] = layers.get(index, 0) + info.nbytes
    heads = int(md.get(f"{arch}.attention.head_count", 1))
    head_dim = int(md.get(f"{arch}.attention.key_length", 0)) or (
        int(md.get(f"{arch}.embedding_length", 0)) // heads
    )
    embed = gf.tensors.get("token_embd.weight")
    head = gf.tensors.get("output.weight")
    return ModelFootprint.of(
        model_id,
        [layers[i] for i in sorted(layers)],
        embed.nbytes if embed else 0,
        head.nbytes if head else 0,
        kv_heads=int(md.get(f"{arch}.attention.head_count_kv", heads)),
        head_dim=head_dim,
    )


def pull(
    target: PullTarget,
    *,
    layers: tuple[int, int] | None = None,
    revision: str = "main",
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Download `target` (only `layers` of it, if given); return its path in the cache."""
    from exoquic.download.gguf import download_gguf
    from exoquic.download.hub import download_model

    if target.filename is not None:
        return download_gguf(
            target.repo_id,
            target.filename,
            layers=layers,
            revision=revision,
            progress=progress,
            cancel=cancel,
        )
    return download_model(
        target.repo_id, layers=layers, revision=revision, progress=progress, cancel=cancel
    )
