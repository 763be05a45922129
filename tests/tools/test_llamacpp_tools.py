"""The llama.cpp comparison tools against the real llama.cpp.

They need llama-cpp-python in the bench environment (tools/llamacpp_env.py).
Tests never install it (a source build of several minutes): without it they
skip. `uv run python tools/requantize_smollm2.py --mixes q8_0` installs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import requantize_smollm2
from llamacpp_env import has_llama_cpp

TOOLS = Path(__file__).resolve().parents[2] / "tools"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not has_llama_cpp(), reason="llama-cpp-python not in the bench venv"),
]


def test_requantized_q4_k_m_agrees_with_llama_cpp(tmp_path: Path) -> None:
    path = requantize_smollm2.quantize("q4_k_m", tmp_path)
    result = requantize_smollm2.agreement(path, "tinygrad")
    assert {"Q4_K", "Q6_K"} <= set(result["types"])  # llama.cpp's mix, with its fallbacks
    assert result["tokens"] >= 256
    assert result["agreement"] >= 0.95, result


def test_bench_measures_both_engines_on_one_file(tmp_path: Path) -> None:
    import gen_gguf

    model = tmp_path / "tiny.gguf"
    gen_gguf.generate("tiny", "q4_k_m", model)
    out = tmp_path / "bench.json"
    command = [sys.executable, str(TOOLS / "bench_llamacpp.py"), str(model), "--json", str(out)]
    command += ["--decode-tokens", "4", "--warmup", "0", "--repeats", "1"]
    subprocess.run(command, check=True, timeout=600)
    results = json.loads(out.read_text())["results"]
    assert [r["engine"] for r in results] == ["llama.cpp", "exoquic tinygrad"]
    for r in results:
        assert "error" not in r, r
        assert r["decode_tok_s"] > 0 and r["prefill_tok_s"] > 0 and r["peak_rss_mib"] > 0
