"""`exoquic models list`: the registry as a table, from the real command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from exoquic.models.listing import REGISTRY_COLUMNS, registry_row
from exoquic.models.registry import get_model, list_models

EXOQUIC = str(Path(sys.executable).with_name("exoquic"))


def test_rows_hold_both_sources_and_sizes() -> None:
    entry = get_model("qwen2.5:7b")
    row = dict(zip(REGISTRY_COLUMNS, registry_row(entry, lambda n: f"{n} B"), strict=True))
    assert row["model"] == "qwen2.5-7b-instruct"
    assert row["ollama"] == "qwen2.5:7b"
    assert (row["arch"], row["layers"]) == ("qwen2", "28")
    assert row["GGUF size"] == f"{entry.total_bytes} B"
    assert row["GGUF"] == "bartowski/Qwen2.5-7B-Instruct-GGUF/Qwen2.5-7B-Instruct-Q4_K_M.gguf"
    assert row["safetensors"] == "Qwen/Qwen2.5-7B-Instruct"
    assert get_model("gemma2:2b").gated
    assert registry_row(get_model("gemma2:2b"), str)[-1] == "google/gemma-2-2b-it (gated)"


def test_models_list_prints_every_entry(tmp_path: Path) -> None:
    env = {**os.environ, "EXOQUIC_HOME": str(tmp_path), "COLUMNS": "80", "HF_HUB_OFFLINE": "1"}
    env.pop("EXOQUIC_HF_CACHE", None)
    result = subprocess.run(
        [EXOQUIC, "models", "list"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for entry in list_models():
        # Whole names, never cut, even in 80 columns: the table grows wider instead.
        (line,) = [line for line in lines if f" {entry.id} " in line]
        assert f" {entry.ollama[0]} " in line
        assert f"{entry.gguf_repo}/{entry.gguf_file}" in line
        assert entry.hf_repo in line
