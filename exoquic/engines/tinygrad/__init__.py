"""The tinygrad engine (CPU through clang). `tinygrad_available` says whether it can run here.

Importing this package does not import tinygrad; `exoquic.engines.tinygrad.engine` does.
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
