"""Planning a GGUF shard: which tensors, which byte ranges, what header (pure)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures.hub_gguf import GGUF_FILE, GGUF_LAYERS, TOOLS
from gguf import GGUFWriter

from exoquic.download.errors import DownloadError
from exoquic.download.gguf_slice import (
    SliceLayout,
    SourceFile,
    check_layout,
    plan_slice,
    tensor_wanted,
)
from exoquic.models.gguf_file import GGUFFile, GGUFHeaderIncomplete, parse_gguf_header
from exoquic.models.gguf_shard import shard_info
from exoquic.models.shard import Shard


def _shard(start: int, end: int, layers: int = 6) -> Shard:
    return Shard("m", start, end, layers)


@pytest.mark.parametrize(
    ("name", "first", "middle", "last"),
    [
        ("blk.0.attn_q.weight", True, False, False),
        ("blk.3.ffn_down.weight", False, True, False),
        ("blk.5.attn_norm.weight", False, False, True),
        ("token_embd.weight", True, False, False),
        ("output_norm.weight", False, False, True),
        ("output.weight", False, False, True),
        ("rope_freqs.weight", True, True, True),  # model-wide: every shard
    ],
)
def test_each_tensor_goes_to_the_shards_that_use_it(
    name: str, first: bool, middle: bool, last: bool
) -> None:
    shards = (_shard(0, 1), _shard(2, 3), _shard(4, 5))
    wanted = [tensor_wanted(name, s, tied=False) for s in shards]
    assert wanted == [first, middle, last]


def test_a_tied_head_brings_the_embedding_to_the_last_shard() -> None:
    assert tensor_wanted("token_embd.weight", _shard(4, 5), tied=True)
    assert not tensor_wanted("token_embd.weight", _shard(2, 3), tied=True)


def _source(gguf_repo_dir: Path) -> tuple[GGUFFile, bytes, SourceFile]:
    path = gguf_repo_dir / GGUF_FILE
    gf = GGUFFile.open(path)
    with path.open("rb") as f:
        prefix = f.read(gf.data_start)
    return gf, prefix, SourceFile(GGUF_FILE, gf.size, "ab" * 32)


def test_a_header_parses_from_a_prefix_and_asks_for_more_when_cut(gguf_repo_dir: Path) -> None:
    gf, prefix, _ = _source(gguf_repo_dir)
    parsed = parse_gguf_header(prefix, gf.size, GGUF_FILE)
    assert parsed.tensors == gf.tensors and parsed.data_start == gf.data_start
    with pytest.raises(GGUFHeaderIncomplete) as cut:
        parse_gguf_header(prefix[: len(prefix) // 2], gf.size, GGUF_FILE)
    assert len(prefix) // 2 < cut.value.needed <= len(prefix)


@pytest.mark.parametrize("layers", [(0, 1), (2, 3), (4, 5), (1, 4)])
def test_the_planned_shard_is_aligned_and_holds_exactly_its_tensors(
    gguf_repo_dir: Path, tmp_path: Path, layers: tuple[int, int]
) -> None:
    gf, prefix, source = _source(gguf_repo_dir)
    shard = _shard(*layers, GGUF_LAYERS)
    layout = plan_slice(gf, prefix, shard, source)

    out = _write(layout, gguf_repo_dir / GGUF_FILE, tmp_path / "shard.gguf")
    sliced = GGUFFile.open(out)
    wanted = {n for n in gf.tensors if tensor_wanted(n, shard, tied=False)}
    assert set(sliced.tensors) == wanted
    for name in wanted:
        assert sliced.tensors[name].offset % gf.alignment == 0
        np.testing.assert_array_equal(sliced.read_tensor(name), gf.read_tensor(name))
    # The source's metadata is kept whole, plus the shard keys.
    assert {k: v for k, v in sliced.metadata.items() if not k.startswith("exoquic.")} == (
        gf.metadata
    )
    info = shard_info(sliced.metadata, str(out))
    assert info is not None
    assert (info.start_layer, info.end_layer, info.source_size) == (*layers, gf.size)
    assert info.source_sha256 == source.sha256
    assert sliced.metadata["exoquic.shard.source_tensors"] == sorted(gf.tensors)
    assert layout.fetched_bytes == sum(r.nbytes for r in layout.runs)
    assert layout.fetched_bytes >= sum(gf.tensors[n].nbytes for n in wanted)


def test_a_shard_is_not_cut_again(gguf_repo_dir: Path, tmp_path: Path) -> None:
    gf, prefix, source = _source(gguf_repo_dir)
    layout = plan_slice(gf, prefix, _shard(2, 3), source)
    out = _write(layout, gguf_repo_dir / GGUF_FILE, tmp_path / "shard.gguf")
    again = GGUFFile.open(out)
    with pytest.raises(DownloadError, match="itself a shard"):
        plan_slice(again, out.read_bytes()[: again.data_start], _shard(2, 2), source)


def test_overlapping_tensors_are_refused(gguf_repo_dir: Path) -> None:
    gf, _, _ = _source(gguf_repo_dir)
    a, b = sorted(gf.tensors.values(), key=lambda t: t.offset)[3:5]
    tensors = dict(gf.tensors) | {b.name: dataclasses.replace(b, offset=a.offset)}
    with pytest.raises(DownloadError, match="overlap"):
        check_layout(dataclasses.replace(gf, tensors=tensors))


def test_an_8b_q4_k_m_third_of_the_layers_is_under_0_4_of_the_file(tmp_path: Path) -> None:
    """The figure for the note: computed from the header tools/gen_gguf.py writes for
    Llama-3.1-8B's shape in llama.cpp's Q4_K_M mix (the 4.9 GB file is never written)."""
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))
    from gen_gguf import generate_header

    path = tmp_path / "8b.header"
    generate_header("llama-3.1-8b", "q4_k_m", path)
    prefix = path.read_bytes()
    parsed = parse_gguf_header(prefix, 1 << 62, "8b.gguf")
    size = max(t.offset + t.nbytes for t in parsed.tensors.values())
    gf = dataclasses.replace(parsed, size=size)
    assert 4.8e9 < size < 5.0e9
    fractions = []
    for start, end in ((0, 10), (11, 21), (22, 31)):  # 32 layers over three nodes
        layout = plan_slice(gf, prefix, Shard("8b", start, end, 32), SourceFile("8b", size, None))
        fractions.append((layout.fetched_bytes + gf.data_start) / size)
    print("8B Q4_K_M, bytes fetched per third of the layers:", [f"{f:.3f}" for f in fractions])
    assert max(fractions) <= 0.4
    assert min(fractions) >= 0.25  # really a third of the layers, not nothing


def _write(layout: SliceLayout, source: Path, out: Path) -> Path:
    """Assemble a planned shard from a local copy of the source (what the downloader
    does with fetched ranges)."""
    with source.open("rb") as src, out.open("wb") as f:
        f.write(layout.header)
        for run in layout.runs:
            src.seek(run.source_start)
            f.seek(run.dest_start)
            f.write(src.read(run.nbytes))
        f.truncate(layout.size)
    return out


def test_a_file_written_by_gguf_writer_slices_to_the_layers_asked_for(tmp_path: Path) -> None:
    """gguf.GGUFWriter, not our planner, wrote the source: its format is the reference."""
    path = tmp_path / "one.gguf"
    w = GGUFWriter(path, "llama")
    w.add_block_count(2)
    for i in range(2):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.full(8, i, np.float32))
    w.add_tensor("output_norm.weight", np.ones(8, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    gf = GGUFFile.open(path)
    layout = plan_slice(
        gf, path.read_bytes()[: gf.data_start], _shard(1, 1, 2), SourceFile("one", gf.size, None)
    )
    sliced = GGUFFile.open(_write(layout, path, tmp_path / "cut.gguf"))
    assert set(sliced.tensors) == {"blk.1.attn_norm.weight", "output_norm.weight"}
    np.testing.assert_array_equal(sliced.read_tensor("blk.1.attn_norm.weight"), np.ones(8))


def test_the_metadata_file_has_every_key_and_no_layer(gguf_repo_dir: Path, tmp_path: Path) -> None:
    gf, prefix, source = _source(gguf_repo_dir)
    layout = plan_slice(gf, prefix, None, source)
    meta = GGUFFile.open(_write(layout, gguf_repo_dir / GGUF_FILE, tmp_path / "meta.gguf"))
    assert meta.tensors == {}  # this model has no model-wide tensor (no rope_freqs)
    assert layout.runs == () and layout.size == len(layout.header)
    assert {k: v for k, v in meta.metadata.items() if not k.startswith("exoquic.")} == (gf.metadata)
    assert shard_info(meta.metadata, "meta") is None  # it holds no layers
    assert meta.metadata["exoquic.shard.source_tensors"] == sorted(gf.tensors)
    assert tensor_wanted("rope_freqs.weight", None, tied=True)
    assert not tensor_wanted("token_embd.weight", None, tied=True)
    assert not tensor_wanted("blk.0.attn_q.weight", None, tied=True)


def test_a_shard_past_layer_0_keeps_the_familys_features(tmp_path: Path) -> None:
    """qwen2's q/k/v biases are read from `blk.0.*`, which layers 2-3 lack."""
    if str(TOOLS) not in sys.path:
        sys.path.insert(0, str(TOOLS))
    from gen_gguf import ModelShape, generate

    from exoquic.models.gguf_loader import read_gguf_config

    shape = ModelShape("qwen2", 4, 256, 512, 4, 2, 49152, 1e6, 1e-6, 2048, False, qkv_bias=True)
    full = tmp_path / "qwen2.gguf"
    generate(shape, "q8_0", full)
    gf = GGUFFile.open(full)
    prefix = full.read_bytes()[: gf.data_start]
    for shard in (_shard(2, 3, 4), None):  # a late shard, and the metadata file
        layout = plan_slice(gf, prefix, shard, SourceFile("qwen2.gguf", gf.size, None))
        cut = _write(layout, full, tmp_path / "cut.gguf")
        assert read_gguf_config(cut) == read_gguf_config(full)
