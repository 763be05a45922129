"""tools/export_tokenizer.py: the exported directory loads in transformers
(offline) and gives exoquic's own ids, as lm-evaluation-harness needs."""

from __future__ import annotations

from pathlib import Path

import export_tokenizer
import pytest

from exoquic.models.registry import DEFAULT_MODEL_ID
from exoquic.models.source import resolve_source

TEXTS = ["The capital of France is Paris", "emoji 😀 and 日本語, 12345  spaces", "a\n\tb"]


def test_exported_tokenizer_gives_exoquic_ids(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    export_tokenizer.export(DEFAULT_MODEL_ID, tmp_path)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    ours = resolve_source(DEFAULT_MODEL_ID).load_tokenizer()
    for text in TEXTS:
        assert theirs(text, add_special_tokens=False)["input_ids"] == ours.encode(text), text
    # lm-evaluation-harness's perplexity windows start with bos, else eos.
    assert (theirs.bos_token_id, theirs.eos_token_id) == (ours.bos_token_id, ours.eos_token_id)
    assert theirs.eos_token_id is not None
