"""Which files of a Hugging Face model repository a shard needs (pure functions).

A checkpoint split over several safetensors files lists every tensor's file in
`model.safetensors.index.json` (`weight_map`). A shard needs the files holding
its layers' tensors, the embedding on the first shard, and the final norm and
output head on the last. With tied embeddings the head *is* the embedding, so
the last shard needs the embedding's file too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from exoquic.models.shard import Shard

INDEX_FILE = "model.safetensors.index.json"
SINGLE_WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
# Small files every node wants (tokenizer and chat template, sampling defaults),
# fetched whenever the repository has them.
AUX_FILES: tuple[str, ...] = (
    CONFIG_FILE,
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)

EMBED_PREFIX = "model.embed_tokens."
HEAD_PREFIX = "lm_head."
HEAD_WEIGHT = "lm_head.weight"
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def tensor_needed(name: str, shard: Shard, *, head_is_embedding: bool) -> bool:
    """Whether `shard` needs tensor `name`.

    Matching by prefix rather than by exact name keeps the companions of a
    weight (MLX quantization `scales`/`biases`, projection biases) with it.
    Tensors outside the layers other than the embedding (final norm, head)
    belong to the last shard.
    """
    match = _LAYER.match(name)
    if match:
        return shard.start_layer <= int(match.group(1)) <= shard.end_layer
    if name.startswith(EMBED_PREFIX):
        return shard.is_first or (shard.is_last and head_is_embedding)
    if name.startswith(HEAD_PREFIX):  # a stored head unused when tied: skip its file
        return shard.is_last and not head_is_embedding
    return shard.is_last


def weight_files_for_shard(
    weight_map: Mapping[str, str], shard: Shard, *, tie_word_embeddings: bool
) -> list[str]:
    """The safetensors files (sorted) holding the tensors `shard` needs."""
    head_is_embedding = tie_word_embeddings or HEAD_WEIGHT not in weight_map
    return sorted(
        {
            filename
            for name, filename in weight_map.items()
            if tensor_needed(name, shard, head_is_embedding=head_is_embedding)
        }
    )


def aux_files_present(repo_files: Iterable[str]) -> list[str]:
    """The `AUX_FILES` that a repository listing contains, in `AUX_FILES` order."""
    present = set(repo_files)
    return [f for f in AUX_FILES if f in present]


def layer_count_of(config: Mapping[str, object]) -> int:
    """`num_hidden_layers` of a `config.json` mapping (ValueError when absent or bad)."""
    value = config.get("num_hidden_layers")
    if not isinstance(value, int) or value <= 0:
        raise ValueError(f"config.json has no valid num_hidden_layers (got {value!r})")
    return value
