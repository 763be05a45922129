"""`exoquic pull NAME[:TAG]`: names, file choice, and the command against the local hub."""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fixtures.cli_in_process import run_commands, use_home
from fixtures.hub_gguf import GGUF_FILE, GGUF_REPO
from fixtures.hub_server import TINY_REPO, HubServer
from fixtures.terminal import Terminal

from exoquic.cli import models as models_command
from exoquic.cli import pull as pull_command
from exoquic.download.cache import cached_models
from exoquic.download.errors import DownloadError
from exoquic.download.pull import PullTarget, choose_file, parse_name
from exoquic.models.gguf_file import GGUFFile

EXOQUIC = str(Path(sys.executable).with_name("exoquic"))


# -- names (pure) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "repo", "file", "tag"),
    [
        ("owner/repo", "owner/repo", None, None),
        ("owner/repo:Q4_K_M", "owner/repo", None, "Q4_K_M"),
        ("hf.co/owner/repo:q8_0", "owner/repo", None, "q8_0"),
        ("https://huggingface.co/owner/repo", "owner/repo", None, None),
        ("owner/repo/model-Q4_K_M.gguf", "owner/repo", "model-Q4_K_M.gguf", None),
        ("owner/repo/sub/dir/m.gguf", "owner/repo", "sub/dir/m.gguf", None),
    ],
)
def test_names_resolve_to_a_repository_and_maybe_a_file(
    name: str, repo: str, file: str | None, tag: str | None
) -> None:
    target = parse_name(name)
    assert (target.repo_id, target.filename, target.tag) == (repo, file, tag)


@pytest.mark.parametrize("name", ["qwen2.5:7b", "qwen2.5-7b-instruct", "Qwen2.5-7B-Instruct"])
def test_a_registry_name_means_its_q4_k_m_gguf(name: str) -> None:
    target = parse_name(name)
    assert target.entry is not None and target.entry.id == "qwen2.5-7b-instruct"
    assert (target.repo_id, target.filename) == (target.entry.gguf_repo, target.entry.gguf_file)
    assert target.filename is not None and target.filename.endswith("Q4_K_M.gguf")


def test_the_bundled_model_needs_no_pull(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["pull", "smollm2:135m"]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "ships with exoquic" in err


@pytest.mark.parametrize("bad", ["nonsense", "a/b/c", "../x", "owner/../x.gguf", ""])
def test_a_name_that_means_nothing_says_what_names_look_like(bad: str) -> None:
    with pytest.raises(DownloadError, match=r"owner/repo:QUANT"):
        parse_name(bad)


GGUFS = ["m-Q4_K_S.gguf", "m-Q4_K_M.gguf", "m-Q8_0.gguf", "README.md"]


@pytest.mark.parametrize(
    ("tag", "files", "picked"),
    [
        ("Q4_K_M", GGUFS, "m-Q4_K_M.gguf"),
        ("q4_k_s", GGUFS, "m-Q4_K_S.gguf"),
        ("Q8_0", GGUFS, "m-Q8_0.gguf"),
        (None, GGUFS, "m-Q4_K_M.gguf"),  # Ollama's default quantization
        (None, ["only.gguf"], "only.gguf"),
        (None, ["config.json", "model.safetensors", "m-Q4_K_M.gguf"], None),  # safetensors
    ],
)
def test_the_file_is_chosen_by_its_quantization_tag(
    tag: str | None, files: list[str], picked: str | None
) -> None:
    assert choose_file(PullTarget("o/r", None, tag), files).filename == picked


def test_an_unmatched_or_ambiguous_tag_lists_the_candidates() -> None:
    with pytest.raises(DownloadError, match=r"Q4_K .*none"):
        choose_file(PullTarget("o/r", None, "Q4_K"), GGUFS)
    with pytest.raises(DownloadError, match="split GGUFs"):
        choose_file(PullTarget("o/r", None), ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"])


# -- the command, in process --------------------------------------------------------


def run(argv: list[str]) -> int:
    return run_commands(argv, pull_command, models_command)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_home(tmp_path, monkeypatch)


def test_pull_a_gguf_by_tag_then_list_it(
    gguf_hub: HubServer, gguf_repo_dir: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["pull", f"{GGUF_REPO}:Q4_K_M"]) == 0
    out, err = capsys.readouterr()
    path = Path(out.strip())
    assert path.read_bytes() == (gguf_repo_dir / GGUF_FILE).read_bytes()
    assert "fits" in err  # a 22 MB model fits this machine at 2048 tokens

    # Some layers of a file that is cached whole: the whole file serves them.
    assert run(["pull", GGUF_REPO, "--layers", "2-3"]) == 0
    assert Path(capsys.readouterr().out.strip()) == path
    assert run(["models", "list"]) == 0
    listed = capsys.readouterr().out
    assert GGUF_REPO in listed and "22.7 MB in 1 file" in listed


def test_pull_only_some_layers_lists_the_shard(
    gguf_hub: HubServer, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["pull", f"{GGUF_REPO}/{GGUF_FILE}", "--layers", "2-3"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert GGUFFile.open(path).metadata["exoquic.shard.start_layer"] == 2
    (model,) = cached_models(home / "models" / "hub")
    assert model.repo_id == GGUF_REPO
    assert [(s.file, s.start_layer, s.end_layer, s.num_layers) for s in model.shards] == [
        (GGUF_FILE, 2, 3, 6)
    ]
    # The shard and the header kept for the next shard; no whole file.
    header = next(path.parent.glob("*.header"))
    assert model.files == 0
    assert model.size_on_disk >= path.stat().st_size
    assert header.stat().st_size < path.stat().st_size


def test_pull_a_safetensors_repository(
    hub: HubServer, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["pull", TINY_REPO]) == 0
    snapshot = Path(capsys.readouterr().out.strip())
    assert (snapshot / "config.json").is_file()
    assert len(list(snapshot.glob("*.safetensors"))) == 3


def test_pull_of_a_model_too_big_warns_with_the_shortfall(
    gguf_hub: HubServer,
    home: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("psutil.virtual_memory", lambda: SimpleNamespace(available=10**9))
    # 6 layers x 2 KV heads x 64 values x 2 x 4 bytes: 6 KB a token; 1M tokens: 6.3 GB.
    assert run(["pull", f"{GGUF_REPO}:Q4_K_M", "--max-context", "1000000"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"warning: .* does not fit: needs [\d.]+ GB more", err), err
    assert "add a device or lower --max-context" in err


def test_pull_of_an_unknown_repository_is_one_line(
    hub: HubServer, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["pull", "exoquic-test/missing"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("exoquic: exoquic-test/missing: no such model"), err
    assert "Traceback" not in err


# -- the command, in a real terminal ------------------------------------------------


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    with Terminal(tmp_path, width=120) as term:
        yield term


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_pull_shows_bytes_rate_and_eta_in_a_terminal(
    gguf_hub: HubServer, gguf_repo_dir: Path, terminal: Terminal, tmp_path: Path
) -> None:
    gguf_hub.rate = 6e6  # ~4 s for the 22.7 MB file: long enough to watch
    env = {
        "EXOQUIC_HOME": str(tmp_path / "home"),
        "HF_ENDPOINT": gguf_hub.endpoint,
        "PATH": os.environ["PATH"],
    }
    done = terminal.start(f"{EXOQUIC} pull {GGUF_REPO}:Q4_K_M", env)
    # Mid-download: some of the megabytes, a rate, and a time left.
    midway = re.compile(r"(\d+\.\d)/22\.7 MB\s+\d+\.\d MB/s\s+0:00:0\d")
    seen = None
    for _ in range(200):
        match = midway.search(terminal.screen())
        if match and float(match.group(1)) < 22.7:
            seen = match.group(0)
            break
        terminal.wait_for_text("\n$ ", timeout=0.05)
    assert seen is not None, terminal.screen()
    assert terminal.wait(done, timeout=120) == 0, terminal.screen()
    screen = terminal.screen()
    assert "22.7/22.7 MB" in screen, screen
    assert f"{GGUF_REPO}/{GGUF_FILE}" in screen
    assert "fits" in screen and "Traceback" not in screen


def test_pull_without_a_hub_is_one_line(
    home: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("owner/repo", "owner/repo/m.gguf"):
        assert run(["pull", name]) == 1
        err = capsys.readouterr().err
        assert err.startswith("exoquic: ") and "cannot reach the hub" in err, err
        assert "Traceback" not in err


def test_a_pulled_registry_gguf_is_listed_on_its_entry_and_removed_by_name(
    hub: HubServer, gguf_repo_dir: Path, home: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from exoquic.models.registry import get_model

    monkeypatch.setenv("COLUMNS", "400")  # one table row a line

    entry = get_model("smollm2:360m")
    assert entry.gguf_repo and entry.gguf_file
    folder = tmp_path / "as-registry"
    folder.mkdir()
    (folder / entry.gguf_file).symlink_to(gguf_repo_dir / GGUF_FILE)  # stands in for it
    hub.add_repo(entry.gguf_repo, folder)

    assert run(["pull", "smollm2:360m", "--layers", "2-3"]) == 0
    capsys.readouterr()
    assert run(["models", "list"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if entry.id in line)
    assert f"{entry.gguf_file} layers 2-3 of 6" in row
    assert run(["models", "rm", "smollm2:360m"]) == 0
    assert capsys.readouterr().out == f"removed {entry.gguf_repo}\n"
    assert cached_models(home / "models" / "hub") == []


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_a_pull_stopped_with_ctrl_c_resumes_where_it_stopped(
    gguf_hub: HubServer, gguf_repo_dir: Path, terminal: Terminal, tmp_path: Path
) -> None:
    gguf_hub.rate = 4e6
    env = {
        "EXOQUIC_HOME": str(tmp_path / "home"),
        "HF_ENDPOINT": gguf_hub.endpoint,
        "PATH": os.environ["PATH"],
    }
    command = f"{EXOQUIC} pull {GGUF_REPO}/{GGUF_FILE}"
    done = terminal.start(command, env)
    assert terminal.wait_for_text("/22.7 MB", timeout=60), terminal.screen()
    time.sleep(1.5)  # some megabytes in
    terminal.interrupt()
    assert terminal.wait(done, timeout=60) == 130, terminal.screen()
    (partial,) = (tmp_path / "home").rglob("*.incomplete")
    kept = partial.stat().st_size
    assert 0 < kept < (gguf_repo_dir / GGUF_FILE).stat().st_size
    gguf_hub.clear_log()
    gguf_hub.rate = None

    assert terminal.run(command, env, timeout=120) == 0, terminal.screen()
    gets = [e for e in gguf_hub.requests(method="GET", server="cdn") if e.body_bytes]
    assert gets[-1].range == f"bytes={kept}-"  # the whole file, from where it stopped
    assert "Traceback" not in terminal.screen()
