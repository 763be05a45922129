"""Missing, truncated and corrupt model files fail with a ModelLoadError naming the file."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from exoquic.models.errors import ModelLoadError
from exoquic.models.gguf_file import GGUFFile
from exoquic.models.gguf_loader import load_gguf_shard, read_gguf_config
from exoquic.models.hf_loader import load_hf_shard
from exoquic.models.safetensors_file import SafetensorsFile
from exoquic.models.shard import Shard
from exoquic.models.source import resolve_source
from exoquic.models.tokenizer import Tokenizer

SHARD = Shard("m", 0, 0, 30)


def _prefix_copy(src: Path, dst: Path, n: int) -> Path:
    with src.open("rb") as f:
        dst.write_bytes(f.read(n))
    return dst


def test_missing_gguf(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    with pytest.raises(ModelLoadError, match=r"nope\.gguf: model file not found"):
        load_gguf_shard(missing, SHARD)


@pytest.mark.parametrize("n", [0, 3, 4, 23, 100, 600_000])
def test_truncated_gguf_header(smollm2_gguf_path: Path, tmp_path: Path, n: int) -> None:
    cut = _prefix_copy(smollm2_gguf_path, tmp_path / "cut.gguf", n)
    with pytest.raises(ModelLoadError) as info:
        read_gguf_config(cut)
    message = str(info.value)
    assert message.startswith(f"{cut}: ")
    assert "truncated" in message or "not a GGUF file" in message


def test_truncated_gguf_data(smollm2_gguf_path: Path, tmp_path: Path) -> None:
    """A file cut inside the tensor data is caught when opened, naming a tensor."""
    size = smollm2_gguf_path.stat().st_size
    for n in (size // 2, size - 1):
        cut = _prefix_copy(smollm2_gguf_path, tmp_path / "cut.gguf", n)
        with pytest.raises(ModelLoadError, match=rf"truncated: tensor \S+ needs .* is {n} bytes"):
            load_gguf_shard(cut, SHARD)


def test_not_a_gguf(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        read_gguf_config(bogus)
    bogus.write_bytes(b"GGUF" + struct.pack("<I", 99) + bytes(16))
    with pytest.raises(ModelLoadError, match="unsupported GGUF version 99"):
        read_gguf_config(bogus)


def test_absurd_array_length(tmp_path: Path) -> None:
    """A corrupt element count is rejected up front, not after reading the whole file."""
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    key = b"tokenizer.ggml.tokens"
    kv = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, 2**62)
    bogus = tmp_path / "big.gguf"
    bogus.write_bytes(header + kv + bytes(64))
    with pytest.raises(ModelLoadError, match="claims 4611686018427387904 elements"):
        GGUFFile.open(bogus)


def test_string_array_that_is_not_utf8(tmp_path: Path) -> None:
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, 1)
    key = b"tokenizer.ggml.tokens"
    words = [b"ok", b"\xff\xfe", b"fine"]
    kv = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, len(words))
    kv += b"".join(struct.pack("<Q", len(w)) + w for w in words)
    bogus = tmp_path / "bad-utf8.gguf"
    bogus.write_bytes(header + kv)
    with pytest.raises(ModelLoadError, match="tokens is not valid UTF-8"):
        GGUFFile.open(bogus)
    bogus.write_bytes(header + kv.replace(b"\xff\xfe", b"ab"))
    assert GGUFFile.open(bogus).metadata["tokenizer.ggml.tokens"] == ["ok", "ab", "fine"]


def test_random_header_corruption_only_raises_model_load_error(
    smollm2_gguf_path: Path, tmp_path: Path
) -> None:
    """Flipped bytes in the header either still parse or raise ModelLoadError, nothing else."""
    original = _prefix_copy(smollm2_gguf_path, tmp_path / "head.bin", 4096)
    head = original.read_bytes()
    target = tmp_path / "corrupt.gguf"
    rng = random.Random(0)
    for _ in range(40):
        data = bytearray(head)
        for _ in range(4):
            data[rng.randrange(len(data))] = rng.randrange(256)
        target.write_bytes(bytes(data))
        with pytest.raises(ModelLoadError):
            # The 4 KiB prefix is always truncated, so it can never parse completely.
            GGUFFile.open(target)


def test_tokenizer_from_truncated_gguf(smollm2_gguf_path: Path, tmp_path: Path) -> None:
    cut = _prefix_copy(smollm2_gguf_path, tmp_path / "cut.gguf", 300_000)
    with pytest.raises(ModelLoadError, match="truncated"):
        Tokenizer.from_gguf(cut)


def test_resolving_a_truncated_file_defers_the_error_to_loading(
    smollm2_gguf_path: Path, tmp_path: Path
) -> None:
    cut = _prefix_copy(smollm2_gguf_path, tmp_path / "cut.gguf", 1000)
    source = resolve_source(cut)
    with pytest.raises(ModelLoadError, match=r"cut\.gguf: truncated"):
        source.load_config()


def _tiny_safetensors(path: Path) -> None:
    save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(path))


def test_valid_tiny_safetensors_reads(tmp_path: Path) -> None:
    path = tmp_path / "ok.safetensors"
    _tiny_safetensors(path)
    assert SafetensorsFile.open(path).read_float32("a").tolist() == [[0, 1, 2], [3, 4, 5]]


def test_truncated_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    _tiny_safetensors(path)
    data = path.read_bytes()
    for n in (0, 5, 8, 20, len(data) - 1):
        path.write_bytes(data[:n])
        with pytest.raises(ModelLoadError, match=r"t\.safetensors: (truncated|corrupt)"):
            SafetensorsFile.open(path)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"{not json", "corrupt safetensors header"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"a": {"dtype": "F32", "shape": [2]}}).encode(), "corrupt header entry"),
        (
            json.dumps({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}).encode(),
            "do not fit",
        ),
        (
            json.dumps({"a": {"dtype": "Q9", "shape": [2], "data_offsets": [0, 8]}}).encode(),
            "unsupported dtype Q9",
        ),
    ],
)
def test_corrupt_safetensors_header(tmp_path: Path, header: bytes, message: str) -> None:
    path = tmp_path / "c.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(ModelLoadError, match=message):
        SafetensorsFile.open(path)


def test_absurd_safetensors_header_length(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + bytes(16))
    with pytest.raises(ModelLoadError, match="corrupt safetensors header length"):
        SafetensorsFile.open(path)


def test_corrupt_safetensors_in_hf_dir(tmp_path: Path) -> None:
    """The loader's error names the corrupt file, not just 'bad model'."""
    config = {
        "vocab_size": 4,
        "hidden_size": 8,
        "intermediate_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: corrupt safetensors header"):
        load_hf_shard(tmp_path, Shard("m", 0, 0, 1))
