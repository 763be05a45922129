"""Fixtures for download tests: a local hub serving a tiny llama-shaped repository."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fixtures.hub_server import HubServer, run_hub_server
from safetensors.numpy import save_file

TINY_REPO = "exoquic-test/tiny-llama"
TINY_LAYERS = 6
# Which file holds what, like a transformers checkpoint of a tied model (no lm_head).
TINY_FILES = {
    "model-00001-of-00003.safetensors": ("embed", 0, 1),
    "model-00002-of-00003.safetensors": (None, 2, 3),
    "model-00003-of-00003.safetensors": ("norm", 4, 5),
}
SUFFIXES = (
    ("input_layernorm.weight", (16,)),
    ("self_attn.q_proj.weight", (16, 16)),
    ("self_attn.k_proj.weight", (8, 16)),
    ("self_attn.v_proj.weight", (8, 16)),
    ("self_attn.o_proj.weight", (16, 16)),
    ("post_attention_layernorm.weight", (16,)),
    ("mlp.gate_proj.weight", (32, 16)),
    ("mlp.up_proj.weight", (32, 16)),
    ("mlp.down_proj.weight", (16, 32)),
)


def build_tiny_repo(out: Path) -> Path:
    """A 6-layer, hidden-16 llama repo in 3 safetensors files, with tokenizer files.

    Small enough that every test can download it, big enough (~100 KB per
    file) that a download can be cut in the middle.
    """
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    weight_map: dict[str, str] = {}
    for filename, (extra, first, last) in TINY_FILES.items():
        tensors: dict[str, np.ndarray] = {}
        if extra == "embed":
            tensors["model.embed_tokens.weight"] = rng.standard_normal((512, 16), np.float32)
        for i in range(first, last + 1):
            for suffix, shape in SUFFIXES:
                tensors[f"model.layers.{i}.{suffix}"] = rng.standard_normal(shape, np.float32)
        if extra == "norm":
            tensors["model.norm.weight"] = np.ones(16, np.float32)
        # Padding makes each file big enough to cut a download in its middle.
        tensors[f"model.layers.{first}.pad"] = rng.standard_normal((24_000,), np.float32)
        save_file(tensors, str(out / filename), {"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, filename))
    _json(out / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
    _json(
        out / "config.json",
        {
            "model_type": "llama",
            "vocab_size": 512,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": TINY_LAYERS,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "tie_word_embeddings": True,
        },
    )
    _json(out / "generation_config.json", {"eos_token_id": 2})
    _json(out / "tokenizer.json", {"version": "1.0", "model": {"type": "BPE"}})
    _json(out / "tokenizer_config.json", {"chat_template": "{{ messages }}"})
    (out / "README.md").write_text("# tiny test model\n")
    return out


def _json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture(scope="session")
def tiny_repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_repo(tmp_path_factory.mktemp("tiny-repo"))


@pytest.fixture
def hub(tiny_repo_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A local hub serving the tiny repo, with HF_ENDPOINT pointing at it."""
    with run_hub_server() as server:
        server.add_repo(TINY_REPO, tiny_repo_dir)
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield server


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"
