"""ModelSource over a GGUF: what a node start reads, and how often it reads the header."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from exoquic.models import gguf_file
from exoquic.models.gguf_file import GGUFFile
from exoquic.models.shard import Shard
from exoquic.models.source import ModelSource


def test_a_node_start_parses_the_header_once(
    smollm2_gguf_path: Path, tmp_path: Path, gguf_parses: list[Path]
) -> None:
    path = shutil.copy(smollm2_gguf_path, tmp_path / "model.gguf")
    # Not a registry id: every answer comes from the file itself.
    source = ModelSource("a-local-gguf", "gguf", Path(path))
    config = source.load_config()
    tokenizer = source.load_tokenizer()
    sizes = source.part_sizes(config)
    weights = source.load_shard(Shard("a-local-gguf", 0, 1, config.num_layers))
    assert tokenizer.vocab_size == config.vocab_size
    assert sizes.bytes_per_layer > 0 and set(weights.tensors)
    assert gguf_parses == [Path(path)]


def test_a_changed_file_is_parsed_again(
    smollm2_gguf_path: Path, tmp_path: Path, gguf_parses: list[Path]
) -> None:
    path = Path(shutil.copy(smollm2_gguf_path, tmp_path / "model.gguf"))
    first = GGUFFile.open_cached(path)
    with path.open("ab") as f:  # in place: the same inode, a new size
        f.write(b"\0" * 32)
    again = GGUFFile.open_cached(path)
    assert again.size == first.size + 32
    replaced = tmp_path / "new.gguf"
    shutil.copy(smollm2_gguf_path, replaced)
    replaced.replace(path)  # what the downloader does: a new file renamed into place
    assert GGUFFile.open_cached(path).size == first.size
    assert len(gguf_parses) == 3


def test_each_caller_gets_its_own_memory_map(
    smollm2_gguf_path: Path, gguf_parses: list[Path]
) -> None:
    first = GGUFFile.open_cached(smollm2_gguf_path)
    first.view_tensor("token_embd.weight")
    second = GGUFFile.open_cached(smollm2_gguf_path)
    assert second.tensors is first.tensors  # one parse...
    assert "_mapped" in vars(first) and "_mapped" not in vars(second)  # ...not one map
    assert len(gguf_parses) == 1


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(gguf_file.ModelLoadError, match="model file not found"):
        GGUFFile.open_cached(tmp_path / "gone.gguf")
