"""The bundled model, served by the local hub as Hugging Face files, downloaded by shard.

What a node downloads must be the model it would run from the GGUF: the same
weights, and the same greedy tokens.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fixtures.hub_server import HubServer, run_hub_server

from exoquic.download import download_shard
from exoquic.models.gguf_loader import load_gguf_shard
from exoquic.models.hf_loader import load_hf_shard
from exoquic.models.shard import Shard

REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
LAYERS = 30
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_hub(hf_model_dir: Path) -> Iterator[HubServer]:
    with run_hub_server() as server:
        server.add_repo(REPO, hf_model_dir)
        yield server


@pytest.fixture
def endpoint(smol_hub: HubServer, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", smol_hub.endpoint)
    smol_hub.clear_log()
    return smol_hub.endpoint


def test_the_last_shard_downloads_its_files_and_loads_the_gguf_weights(
    smol_hub: HubServer, endpoint: str, tmp_path: Path, smollm2_gguf_path: Path
) -> None:
    shard = Shard(REPO, 24, LAYERS - 1, LAYERS)
    weight_files = sorted(f for f in smol_hub.repos[REPO].files if f.endswith(".safetensors"))

    snapshot = download_shard(REPO, shard, tmp_path)

    fetched = smol_hub.downloaded_files()
    # The checkpoint is tied (no lm_head stored): the head comes from the first file.
    assert {weight_files[0], weight_files[-1]} <= fetched
    assert weight_files[1] not in fetched
    hf = load_hf_shard(snapshot, shard)
    gguf = load_gguf_shard(smollm2_gguf_path, shard)
    assert hf.tensors.keys() == gguf.tensors.keys()
    for name in gguf.tensors:
        np.testing.assert_array_equal(hf.dense(name), gguf.dense(name), err_msg=name)


@pytest.mark.skipif(
    importlib.util.find_spec("exoquic.engines.registry") is None
    or importlib.util.find_spec("mlx") is None,
    reason="needs exoquic.engines.registry.create_engine and mlx",
)
def test_the_downloaded_model_generates_the_gguf_models_greedy_tokens(
    endpoint: str, tmp_path: Path, smollm2_gguf_path: Path
) -> None:
    from exoquic.engines.registry import create_engine

    shard = Shard(REPO, 0, LAYERS - 1, LAYERS)
    snapshot = download_shard(REPO, shard, tmp_path)
    prompt = np.array([1, 9690, 198, 2683, 359, 253, 5356, 2], dtype=np.int32)

    def greedy(weights_source: str) -> list[int]:
        # MLX: a few seconds on CPU, where tinygrad spends minutes compiling kernels.
        engine = create_engine("mlx", 256)
        if weights_source == "hub":
            engine.load(load_hf_shard(snapshot, shard))
        else:
            engine.load(load_gguf_shard(smollm2_gguf_path, shard))
        tokens, inputs = [], prompt
        for _ in range(8):
            logits = engine.forward("r", inputs)
            tokens.append(int(np.argmax(logits)))
            inputs = np.array(tokens[-1:], dtype=np.int32)
        return tokens

    assert greedy("hub") == greedy("gguf")
