"""The model registry and resolving `--model` values to model files."""

from __future__ import annotations

from pathlib import Path

import pytest

from exoquic.models.config import ModelConfig
from exoquic.models.errors import ModelLoadError, UnknownModelError
from exoquic.models.gguf_loader import load_gguf_shard
from exoquic.models.registry import (
    DEFAULT_MODEL_ID,
    bundled_gguf_path,
    canonical_model_id,
    find_model,
    get_model,
    list_models,
    packaged_gguf,
)
from exoquic.models.shard import Shard
from exoquic.models.source import resolve_source
from exoquic.models.weights import QuantizedTensor


def test_default_model_and_aliases() -> None:
    entry = get_model(DEFAULT_MODEL_ID)
    assert entry.id == "smollm2-135m-instruct"
    assert (entry.architecture, entry.num_layers) == ("llama", 30)
    assert entry.hf_repo == "HuggingFaceTB/SmolLM2-135M-Instruct"
    for name in ("SmolLM2-135M-Instruct", "smollm2-135M-instruct", entry.hf_repo):
        assert get_model(name) is entry
        assert canonical_model_id(name) == entry.id
    assert canonical_model_id("other-model") == "other-model"
    assert list_models()[0] is entry


def test_unknown_model_lists_known_ids() -> None:
    with pytest.raises(UnknownModelError) as info:
        get_model("gpt-17")
    assert str(info.value).startswith(
        "unknown model 'gpt-17' (known models: smollm2-135m-instruct, "
    )
    with pytest.raises(UnknownModelError, match="smollm2-135m-instruct"):
        resolve_source("gpt-17")


def test_bundled_gguf_is_found() -> None:
    path = bundled_gguf_path()
    assert path.is_file() and path.suffix == ".gguf"
    assert path.read_bytes()[:4] == b"GGUF"


def test_missing_package_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match=r"'no-such-dist-exoquic'.* is not installed"):
        packaged_gguf("no-such-dist-exoquic")


def test_size_estimates_match_a_loaded_layer() -> None:
    entry = get_model(DEFAULT_MODEL_ID)
    weights = load_gguf_shard(bundled_gguf_path(), Shard(entry.id, 0, 0, entry.num_layers))
    sizes = {
        name: (t.blocks.nbytes, t.shape[0] * t.shape[1])
        if isinstance(t, QuantizedTensor)
        else (t.nbytes, t.size)
        for name, t in weights.tensors.items()
    }
    embed = sizes.pop("model.embed_tokens.weight")
    assert embed == (entry.embed_bytes, entry.embed_params)
    assert sum(b for b, _ in sizes.values()) == entry.bytes_per_layer
    assert sum(p for _, p in sizes.values()) == entry.params_per_layer


def test_resolve_registry_id_and_gguf_paths(smollm2_gguf_path: Path, tmp_path: Path) -> None:
    by_id = resolve_source("SmolLM2-135M-Instruct")
    assert (by_id.model_id, by_id.kind, by_id.path) == (DEFAULT_MODEL_ID, "gguf", smollm2_gguf_path)
    by_file = resolve_source(smollm2_gguf_path)
    assert (by_file.kind, by_file.path) == ("gguf", smollm2_gguf_path)
    (tmp_path / "m.gguf").symlink_to(smollm2_gguf_path)
    by_dir = resolve_source(str(tmp_path))
    assert (by_dir.model_id, by_dir.kind) == ("m", "gguf")
    assert by_dir.load_config() == by_id.load_config()


def test_resolve_rejects_a_directory_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a model directory"):
        resolve_source(tmp_path)


def test_gguf_source_loads_everything() -> None:
    source = resolve_source(DEFAULT_MODEL_ID)
    config = source.load_config()
    shard = Shard(source.model_id, 29, 29, config.num_layers)
    weights = source.load_shard(shard)
    assert weights.shard == shard and "lm_head.weight" in weights.tensors
    assert source.load_tokenizer().vocab_size == config.vocab_size


@pytest.mark.slow
def test_hf_source_matches_gguf_source(hf_model_dir: Path) -> None:
    hf = resolve_source(hf_model_dir)
    gguf = resolve_source(DEFAULT_MODEL_ID)
    assert hf.kind == "hf"
    assert hf.load_config() == gguf.load_config()
    shard = Shard("m", 0, 0, 30)
    text = "Hello 😀"
    assert hf.load_tokenizer().encode(text) == gguf.load_tokenizer().encode(text)
    name = "model.embed_tokens.weight"
    assert (hf.load_shard(shard).dense(name) == gguf.load_shard(shard).dense(name)).all()


# The shape keys of meta-llama/Llama-3.2-{1B,3B}-Instruct's published config.json.
LLAMA_3_2_SHAPES = {
    "llama-3.2-1b-instruct": (2048, 16, 32, 64),  # hidden, layers, heads, head_dim
    "llama-3.2-3b-instruct": (3072, 28, 24, 128),
}


@pytest.mark.parametrize("model_id", LLAMA_3_2_SHAPES)
def test_llama_3_2_params_follow_from_their_config(model_id: str) -> None:
    hidden, layers, heads, head_dim = LLAMA_3_2_SHAPES[model_id]
    c = ModelConfig.from_hf_dict(
        {
            "hidden_size": hidden,
            "intermediate_size": 8192,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": 8,
            "head_dim": head_dim,
            "vocab_size": 128256,
            "tie_word_embeddings": True,
        }
    )
    entry = get_model(model_id)
    d = c.hidden_size
    attention = d * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    assert entry.params_per_layer == attention + 3 * d * c.intermediate_size + 2 * d
    assert entry.embed_params == c.vocab_size * d
    assert (entry.num_layers, entry.tie_word_embeddings) == (c.num_layers, True)
    assert entry.float32_bytes_per_layer == 4 * entry.params_per_layer
    assert entry.gated and get_model(entry.hf_repo) is entry


# Sizes of the published Q4_K_M files (bytes, as the hub lists them, rounded to
# 10 MB); ours leave out the header (tokenizer and metadata, a few MB).
PUBLISHED_GGUF_SIZES = {
    "llama-3.2-1b-instruct": 808e6,
    "llama-3.2-3b-instruct": 2.02e9,
    "llama-3.1-8b-instruct": 4.92e9,
    "qwen2.5-7b-instruct": 4.68e9,
    "mistral-7b-instruct-v0.3": 4.37e9,
    "phi-3.5-mini-instruct": 2.39e9,
    "gemma-2-2b-it": 1.71e9,
}


@pytest.mark.parametrize("model_id", PUBLISHED_GGUF_SIZES)
def test_sizes_match_the_published_files(model_id: str) -> None:
    entry = get_model(model_id)
    assert entry.total_bytes == pytest.approx(PUBLISHED_GGUF_SIZES[model_id], rel=0.02)


REQUIRED = [
    "llama-3.2-1b-instruct", "llama-3.2-3b-instruct", "llama-3.1-8b-instruct",
    "qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct", "qwen2.5-7b-instruct",
    "qwen3-0.6b", "qwen3-4b", "qwen3-8b", "mistral-7b-instruct-v0.3",
    "phi-3.5-mini-instruct", "gemma-2-2b-it", "smollm2-135m-instruct",
]  # fmt: skip


def test_every_entry_has_both_sources() -> None:
    assert set(REQUIRED) <= {e.id for e in list_models()}
    for entry in list_models():
        assert entry.gguf_repo and entry.gguf_repo.count("/") == 1, entry.id
        assert entry.gguf_file and entry.gguf_file.lower().endswith("q4_k_m.gguf"), entry.id
        assert entry.hf_repo.count("/") == 1, entry.id
        assert entry.ollama, entry.id
        assert len(entry.layer_bytes) in (0, entry.num_layers)
        assert max(entry.layer_bytes, default=entry.bytes_per_layer) == entry.bytes_per_layer


def test_every_name_means_one_model() -> None:
    owners: dict[str, str] = {}
    for entry in list_models():
        for name in entry.names():
            assert owners.setdefault(name.casefold(), entry.id) == entry.id, name


@pytest.mark.parametrize(
    ("name", "model_id"),
    [
        ("llama3.2:1b", "llama-3.2-1b-instruct"),
        ("llama3.2", "llama-3.2-3b-instruct"),
        ("llama3.2:1b-instruct-q4_K_M", "llama-3.2-1b-instruct"),
        ("llama3.1:8b", "llama-3.1-8b-instruct"),
        ("qwen2.5:7b", "qwen2.5-7b-instruct"),
        ("qwen2.5:0.5b-instruct", "qwen2.5-0.5b-instruct"),
        ("qwen3:8b", "qwen3-8b"),
        ("qwen3:0.6b-q4_k_m", "qwen3-0.6b"),
        ("qwen3", "qwen3-8b"),
        ("smollm2:135m", "smollm2-135m-instruct"),
        ("mistral:7b", "mistral-7b-instruct-v0.3"),
        ("mistral", "mistral-7b-instruct-v0.3"),
        ("phi3.5", "phi-3.5-mini-instruct"),
        ("phi3.5:latest", "phi-3.5-mini-instruct"),
        ("gemma2:2b", "gemma-2-2b-it"),
        ("gemma2:2b-instruct-q4_k_m", "gemma-2-2b-it"),
        ("Qwen/Qwen2.5-7B-Instruct", "qwen2.5-7b-instruct"),
        (" QWEN3-4B ", "qwen3-4b"),
    ],
)
def test_find_model_by_ollama_name_and_alias(name: str, model_id: str) -> None:
    entry = find_model(name)
    assert entry is not None and entry.id == model_id


@pytest.mark.parametrize("name", ["llama3.2:70b", "qwen2.5:7b-instruct-fp16", "gemma2", ""])
def test_find_model_refuses_other_builds(name: str) -> None:
    assert find_model(name) is None


def test_ollama_names_resolve_like_ids(smollm2_gguf_path: Path) -> None:
    source = resolve_source("smollm2:135m")
    assert (source.model_id, source.kind, source.path) == (
        DEFAULT_MODEL_ID,
        "gguf",
        smollm2_gguf_path,
    )
    assert canonical_model_id("qwen2.5:7b") == "qwen2.5-7b-instruct"
