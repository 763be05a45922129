"""Models in a temporary hub cache, for the on-demand loading tests: a tiny
generated GGUF (tools/gen_gguf.py), a header claiming an 8B model (a sparse
file: its weights take no disk), and a repository holding only a layer slice."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

from exoquic.download.cache import RepoCache

TOOLS = Path(__file__).resolve().parents[2] / "tools"
COMMIT = "c0ffee" + "0" * 34

TINY_REPO = "test-org/tiny-GGUF"
TINY_FILE = "tiny-Q8_0.gguf"
TINY_ID = f"{TINY_REPO}/{TINY_FILE}"
MID_REPO = "test-org/mid-GGUF"
MID_FILE = "mid-Q8_0.gguf"
MID_ID = f"{MID_REPO}/{MID_FILE}"
HUGE_REPO = "test-org/huge-GGUF"
HUGE_FILE = "huge-Q4_K_M.gguf"
HUGE_ID = f"{HUGE_REPO}/{HUGE_FILE}"
HUGE_BYTES = 6_000_000_000
BROKEN_ID = (
    "test-org/broken-GGUF/broken-Q4_K_M.gguf"  # more than the 8B Q4_K_M's tensors (4.9 GB) need
)


def gen_gguf() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_gguf", TOOLS / "gen_gguf.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_gguf", module)
    spec.loader.exec_module(module)
    return module


def add_to_cache(cache_dir: Path, repo_id: str, filename: str, blob_writer: Path | None) -> Path:
    """Put a file in the cache as `exoquic pull` leaves it (blob, snapshot link,
    refs/main); `blob_writer` is a file to copy, or None when the blob is written
    in place by the caller (returned path)."""
    cache = RepoCache(cache_dir, repo_id)
    etag = hashlib.sha256(f"{repo_id}/{filename}".encode()).hexdigest()
    blob = cache.blob(etag)
    blob.parent.mkdir(parents=True, exist_ok=True)
    if blob_writer is not None:
        shutil.copyfile(blob_writer, blob)
    cache.write_ref("main", COMMIT)
    cache.link(COMMIT, filename, blob)
    return blob


def cache_tiny(cache_dir: Path, work: Path) -> Path:
    """The tiny llama (4 layers, hidden 256, SmolLM2's tokenizer), Q8_0, in the cache."""
    gen = gen_gguf()
    source = work / TINY_FILE
    gen.generate(replace(gen.SHAPES["tiny"], context=512), "q8_0", source)
    return add_to_cache(cache_dir, TINY_REPO, TINY_FILE, source)


def cache_mid(cache_dir: Path, work: Path) -> Path:
    """A bigger one (8 layers, hidden 1024, ~190 MB at Q8_0), whose unloading shows in RSS."""
    gen = gen_gguf()
    source = work / MID_FILE
    shape = replace(gen.SHAPES["tiny"], layers=8, hidden=1024, ffn=4096, heads=8, kv_heads=4)
    gen.generate(replace(shape, context=512), "q8_0", source)
    return add_to_cache(cache_dir, MID_REPO, MID_FILE, source)


def cache_huge(cache_dir: Path) -> Path:
    """A GGUF whose header describes Llama-3.1-8B Q4_K_M; the data is a hole."""
    gen = gen_gguf()
    blob = add_to_cache(cache_dir, HUGE_REPO, HUGE_FILE, None)
    gen.generate_header("llama-3.1-8b", "q4_k_m", blob)
    os.truncate(blob, HUGE_BYTES)
    return blob


def cache_broken(cache_dir: Path, work: Path) -> Path:
    """A file named like a GGUF that is not one (a download gone wrong)."""
    source = work / "broken.gguf"
    source.write_bytes(b"GGUF" + b"\xff" * 60)
    repo, _, filename = BROKEN_ID.rpartition("/")
    return add_to_cache(cache_dir, repo, filename, source)
