"""The tinygrad engine: llama shards on tinygrad's CPU device (kernels compiled by clang).

`tinygrad_available()` says whether it can run here; importing this package does
not import tinygrad (`exoquic.engines.tinygrad.engine.TinygradEngine` does).

How a step runs (module by module):

- `matrices`: GGML weights stay quantized, wrapped in place as tinygrad tensors
  (`HostArrays`): Q5_0/Q5_1/Q8_0/K-quants/F16/BF16 as the file's own bytes
  (from its memory map), Q4_0/Q4_1 repacked with float32 scales.
- `block_decode`: the file-layout kinds decoded as tinygrad expressions (the
  portable path), bit-exact with `gguf.quants`.
- `cpu_kernels`, `ggml_kernels` + `custom`: the hot kernels (quantized products, RMS norm,
  SwiGLU, RoPE + KV-cache write, attention) are C written here and inserted
  into tinygrad graphs as custom kernels; activations meet the weights as int16
  blocks in integer dot products (float32 GEMM for prefill chunks).
- `model`: one layer for B requests (each with its own cache and position, a
  bound tinygrad variable); the head; `fast=False` builds the same model from
  tinygrad-generated kernels only, with float32 activations (slow reference).
- `step`: traces one layer per distinct layer structure with `TinyJit` (the
  weights are JIT inputs) and replays it for every layer; prefill runs in
  buckets of 32/128 rows so few shapes are ever compiled.
- `program_cache`: kernels lowered to C are kept in tinygrad's disk cache, so
  a restarted node neither lowers nor compiles them again.
- `runner`: flattens traced kernels into one table run by a small C dispatcher
  (tinygrad's own replay costs ~100 us per kernel in Python), optionally on
  several threads.
"""

from __future__ import annotations

import functools
import shutil

# tinygrad's CPU device compiles every kernel with this C compiler.
COMPILER = "clang"


@functools.cache
def tinygrad_available() -> str | None:
    """None when tinygrad can compile and run a kernel here, else a human-readable reason."""
    if shutil.which(COMPILER) is None:
        return f"the C compiler {COMPILER!r} is not installed (apt install clang)"
    try:
        from exoquic.engines.tinygrad.device import check_device
    except ImportError as e:  # tinygrad itself missing or broken
        return f"tinygrad cannot be imported: {e}"
    return check_device()
