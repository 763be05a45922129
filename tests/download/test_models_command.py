"""`exoquic models list | download | rm` against the local hub."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from fixtures.cli_in_process import run_commands, use_home
from fixtures.hub_server import TINY_REPO, HubServer

from exoquic.cli import models as models_command
from exoquic.cli.models import format_bytes, parse_layers

FILE2 = "model-00002-of-00003.safetensors"


def run(argv: list[str]) -> int:
    return run_commands(argv, models_command)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_home(tmp_path, monkeypatch)


def test_download_list_and_remove(
    hub: HubServer, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["models", "download", TINY_REPO, "--layers", "2-3"]) == 0
    snapshot = Path(capsys.readouterr().out.strip())
    assert (snapshot / FILE2).is_file()
    assert snapshot.is_relative_to(home / "models" / "hub")
    assert FILE2 in hub.downloaded_files()
    assert "model-00001-of-00003.safetensors" not in hub.downloaded_files()

    assert run(["models", "list"]) == 0
    listed = capsys.readouterr().out
    assert TINY_REPO in listed
    assert "smollm2-135m-instruct" in listed  # registry entries are listed too
    assert "KB in 6 files" in listed

    assert run(["models", "rm", TINY_REPO]) == 0
    assert not snapshot.exists()
    assert run(["models", "rm", TINY_REPO]) == 1


def test_download_failure_is_reported_without_a_traceback(
    hub: HubServer, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["models", "download", "exoquic-test/missing"]) == 1
    assert "exoquic: exoquic-test/missing: no such model" in capsys.readouterr().err


def test_parse_layers() -> None:
    assert parse_layers("0-15") == (0, 15)
    for bad in ("3", "5-2", "a-b", "-1-4"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_layers(bad)


def test_format_bytes() -> None:
    assert [format_bytes(n) for n in (512, 2_500, 3_400_000, 16_100_000_000)] == [
        "512 B",
        "2.5 KB",
        "3.4 MB",
        "16.1 GB",
    ]


def test_offline_download_says_what_to_change_not_to_run_itself_again(
    hub: HubServer, home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert run(["models", "download", TINY_REPO]) == 1
    err = capsys.readouterr().err
    assert "not fully cached" in err and "unset it" in err, err
    assert "exoquic models download" not in err, err


def test_list_keeps_ids_and_repositories_whole_in_a_narrow_terminal(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from exoquic.models.registry import list_models

    monkeypatch.setenv("COLUMNS", "40")
    assert run(["models", "list"]) == 0
    listed = capsys.readouterr().out
    for entry in list_models():
        assert entry.id in listed
        assert entry.hf_repo in listed
