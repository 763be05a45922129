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
    result = requantize_smollm2.agreement(path, "tinygrad", reference=True)
    assert {"Q4_K", "Q6_K"} <= set(result["types"])  # llama.cpp's mix, with its fallbacks
    assert result["tokens"] >= 256
    # Measured 96.4%: llama.cpp rounds activations to 8 bits; exoquic matches float64.
    assert result["agreement"] >= 0.95, result
    assert result["exoquic_vs_reference"] >= 0.99, result


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


@pytest.mark.parametrize(
    ("mix", "tied"),
    [
        ("q4_k_m", False),
        ("q5_k_m", False),
        ("q6_k", False),
        ("q4_k_m", True),
        ("iq4_xs", False),
        ("iq4_nl", True),
    ],
)
def test_generated_mixes_match_llama_cpps_quantizer(mix: str, tied: bool, tmp_path: Path) -> None:
    """llama.cpp re-quantizes a Q8_0 file into `mix`: its types are the ones gen_gguf picks."""
    import dataclasses

    import gen_gguf
    from llamacpp_env import run_worker

    from exoquic.models.gguf_file import GGUFFile

    # 16 layers exercise use_more_bits; a tied embedding is the head, an untied one is not.
    shape = dataclasses.replace(gen_gguf.SHAPES["tiny"], layers=16, tied=tied)
    source, out = tmp_path / "q8_0.gguf", tmp_path / f"{mix}.gguf"
    gen_gguf.generate(shape, "q8_0", source)
    run_worker("quantize", {"source": str(source), "out": str(out), "mix": mix})
    theirs = {name: info.ggml_type for name, info in GGUFFile.open(out).tensors.items()}
    ours = {
        name: gen_gguf.tensor_type(
            mix, name, dims[1], shape.layers, shape.tied, shape.heads // shape.kv_heads
        )
        for name, dims in gen_gguf.tensor_shapes(shape)
        if len(dims) == 2
    }
    assert {name: theirs[name] for name in ours} == ours
