"""The registry as table rows: what `exoquic models list` shows for each model.

Pure data (strings), so the command line draws it with whatever it draws
tables with, and tests read it without a terminal.
"""

from __future__ import annotations

from collections.abc import Callable

from exoquic.models.registry import ModelEntry

REGISTRY_COLUMNS = ("model", "ollama", "arch", "layers", "GGUF size", "GGUF", "safetensors")
# Names people copy into commands: shown whole, never wrapped or cut.
WHOLE_COLUMNS = ("model", "ollama", "GGUF", "safetensors")


def registry_row(entry: ModelEntry, format_size: Callable[[int], str]) -> list[str]:
    """One entry's cells, in `REGISTRY_COLUMNS` order.

    GGUF is `repo/file` of the hub's Q4_K_M file; the size is that of the file
    a node loads (the bundled one for a bundled model).
    """
    gguf = f"{entry.gguf_repo}/{entry.gguf_file}" if entry.gguf_repo else "-"
    return [
        entry.id,
        entry.ollama[0] if entry.ollama else "",
        entry.architecture,
        str(entry.num_layers),
        format_size(entry.total_bytes),
        gguf,
        entry.hf_repo + (" (gated)" if entry.gated else ""),
    ]
