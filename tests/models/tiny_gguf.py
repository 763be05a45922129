"""Writing tiny llama GGUF files for the model tests."""

from __future__ import annotations

from pathlib import Path

import gguf


def tiny_llama_writer(path: Path, rope_freq_base: float) -> gguf.GGUFWriter:
    """A writer for a 1-layer llama GGUF: context 64, hidden 64, FFN 96, 4 heads of
    16 dimensions, 2 kv heads, vocabulary 16. Add keys and tensors, then `finish`."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(96)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(rope_freq_base)
    writer.add_vocab_size(16)
    return writer


def finish(writer: gguf.GGUFWriter) -> None:
    """Write the header, keys and tensors, and close the file."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
