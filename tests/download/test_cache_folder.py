"""The cache's folder names, and what reading the cache does not import."""

from __future__ import annotations

import subprocess
import sys

import pytest
from huggingface_hub.errors import HFValidationError
from huggingface_hub.file_download import repo_folder_name as hub_folder_name

from exoquic.download.cache import repo_folder_name


@pytest.mark.parametrize("repo_id", ["HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2", "o/a_b.c-d"])
def test_folder_names_are_huggingface_hubs(repo_id: str) -> None:
    assert repo_folder_name(repo_id) == hub_folder_name(repo_id=repo_id, repo_type="model")


@pytest.mark.parametrize("repo_id", ["../x", "org/../x", "a/b/c", "org/a--b", "/abs", "org/", ""])
def test_ids_huggingface_hub_refuses_are_refused(repo_id: str) -> None:
    with pytest.raises(HFValidationError):
        hub_folder_name(repo_id=repo_id, repo_type="model")
    with pytest.raises(ValueError, match="invalid repository id"):
        repo_folder_name(repo_id)


def test_starting_a_node_does_not_import_huggingface_hub() -> None:
    """`exoquic up` on a local model never downloads: it need not wait for the import."""
    probe = "import sys, exoquic.serve; print('huggingface_hub' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
