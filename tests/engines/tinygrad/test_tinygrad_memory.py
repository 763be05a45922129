"""A node holding a third of a GGUF's layers keeps only those layers' bytes, once.

The file is written here (K-quant blocks, like a Q4_K_M download); a fresh process
loads the middle third into the tinygrad engine, runs a forward pass (so every
weight it uses is touched), and reports its resident memory.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
from models.ggml_blocks import random_blocks

from exoquic.models.gguf_loader import LAYER_NAMES
from exoquic.models.quant import GGML_TYPES
from exoquic.models.weights import QuantKind

LAYERS, HIDDEN, FFN, HEADS, KV_HEADS, VOCAB = 12, 1024, 4096, 8, 2, 256
SHARD = (4, 7)  # the middle third
MB = 2**20

CHILD = """
import json, sys
import numpy as np
from exoquic.engines.tinygrad.engine import TinygradEngine
from exoquic.models.gguf_loader import load_gguf_shard
from exoquic.models.shard import Shard

def rss():
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile")}

path, start, end, layers, hidden = sys.argv[1], *map(int, sys.argv[2:])
x = np.random.default_rng(0).standard_normal((4, hidden)).astype(np.float32)

def run(first, last):
    engine = TinygradEngine(max_context=64)
    engine.load(load_gguf_shard(path, Shard("m", first, last, layers)))
    engine.forward("r", x)
    engine.forward("r", x[:1])
    return engine

# One layer first, so compiling kernels and tinygrad's caches are not counted.
run(1, 1).unload()
before = rss()
engine = run(start, end)
print(json.dumps({"before": before, "after": rss()}))
"""


def write_gguf(path: Path) -> dict[str, int]:
    """A 12-layer llama GGUF of Q4_K / Q6_K matrices; returns each tensor's bytes."""
    writer = gguf.GGUFWriter(str(path), "llama")
    for add, value in [
        (writer.add_block_count, LAYERS), (writer.add_context_length, 64),
        (writer.add_embedding_length, HIDDEN), (writer.add_feed_forward_length, FFN),
        (writer.add_head_count, HEADS), (writer.add_head_count_kv, KV_HEADS),
        (writer.add_vocab_size, VOCAB),
    ]:  # fmt: skip
        add(value)
    kv = HIDDEN // HEADS * KV_HEADS
    shapes = {
        "attn_q.weight": (HIDDEN, HIDDEN), "attn_k.weight": (kv, HIDDEN),
        "attn_v.weight": (kv, HIDDEN), "attn_output.weight": (HIDDEN, HIDDEN),
        "ffn_gate.weight": (FFN, HIDDEN), "ffn_up.weight": (FFN, HIDDEN),
        "ffn_down.weight": (HIDDEN, FFN),
    }  # fmt: skip
    sizes: dict[str, int] = {}

    def add(name: str, kind: QuantKind, shape: tuple[int, int]) -> None:
        t = random_blocks(kind, *shape, seed=len(sizes), scale=shape[1] ** -0.5)
        writer.add_tensor(name, t.blocks, raw_dtype=GGML_TYPES[t.kind])
        sizes[name] = t.blocks.nbytes

    add("token_embd.weight", "q6_k", (VOCAB, HIDDEN))
    for i in range(LAYERS):
        for norm in ("attn_norm.weight", "ffn_norm.weight"):
            writer.add_tensor(f"blk.{i}.{norm}", np.ones(HIDDEN, np.float32))
        for suffix, shape in shapes.items():
            add(f"blk.{i}.{suffix}", "q6_k" if suffix == "ffn_down.weight" else "q4_k", shape)
    writer.add_tensor("output_norm.weight", np.ones(HIDDEN, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return sizes


def test_a_third_of_the_layers_is_all_a_node_holds(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    sizes = write_gguf(path)
    layer_bytes = sum(n for name, n in sizes.items() if name.startswith("blk.0."))
    shard_bytes = layer_bytes * (SHARD[1] - SHARD[0] + 1)
    assert set(LAYER_NAMES.values()) >= {name.split(".", 2)[2] for name in sizes if "blk" in name}
    argv = [str(path), *map(str, SHARD), str(LAYERS), str(HIDDEN)]
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], capture_output=True, text=True, check=True
    )
    rss = json.loads(out.stdout.splitlines()[-1])
    mapped = rss["after"]["RssFile"] - rss["before"]["RssFile"]
    total = mapped + rss["after"]["RssAnon"] - rss["before"]["RssAnon"]
    # The weights were used from the file's pages (not copied out of it) ...
    assert mapped > 0.6 * shard_bytes, (mapped / MB, shard_bytes / MB)
    # ... and nothing else of the file, nor a second copy, was kept: the other 8 layers
    # are twice the shard, so reading them, or holding the shard twice, fails this.
    assert total < 1.25 * shard_bytes + 16 * MB, (total / MB, mapped / MB, shard_bytes / MB)
