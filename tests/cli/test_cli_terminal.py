"""The command line as people meet it: real `exoquic` commands in a real terminal
(a tmux pane 60 columns wide), checked for what reaches stdout and the screen."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from api.api_helpers import RunningNode, start_node, stop_node
from fixtures.terminal import Terminal

EXOQUIC = str(Path(sys.executable).with_name("exoquic"))

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Terminal]:
    with Terminal(tmp_path) as term:
        yield term


def home_env(home: Path, **extra: str) -> dict[str, str]:
    """The pane's environment: this test's home, no API key unless given."""
    env = {"EXOQUIC_HOME": str(home), "PATH": os.environ["PATH"], **extra}
    env.setdefault("EXOQUIC_API_KEY", "")
    return env


@pytest.mark.slow
def test_run_writes_only_the_answer_to_stdout(terminal: Terminal, tmp_path: Path) -> None:
    answer = tmp_path / "answer.txt"
    done = terminal.start(
        f"{EXOQUIC} run 'What is the capital of France?' > {answer}", home_env(tmp_path / "home")
    )
    # A spinner on the terminal (stderr) while the model loads, gone once it answers.
    assert terminal.wait_for_text("loading smollm2-135m-instruct", timeout=60), terminal.screen()
    status = terminal.wait(done)
    screen = terminal.screen()
    assert status == 0, screen
    assert "loading" not in screen, screen
    # The model's default is greedy: the answer the issue asked for, and nothing else.
    assert answer.read_text() == "The capital of France is Paris.\n", screen
    assert "Traceback" not in screen


def test_id_prints_this_devices_id_without_starting_a_node(
    terminal: Terminal, tmp_path: Path
) -> None:
    from exoquic.identity.keys import load_or_create_identity

    home = tmp_path / "home"
    assert terminal.run(f"{EXOQUIC} id", home_env(home), timeout=60) == 0
    identity = load_or_create_identity(home)
    screen = terminal.screen()
    assert identity.node_id in screen
    assert not (home / "api.json").exists()


@pytest.fixture(scope="module")
def keyed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    """A real `exoquic up` on loopback started with an API key in its environment
    (so none is in its home's token file)."""
    node = start_node(tmp_path_factory.mktemp("home"), api_key="exq-terminal-test-key")
    try:
        log = " ".join(node.log().split())
        assert f"chat UI at {node.url}/" in log, log
        assert "the API requires its key" in log, log
        assert "Running on" not in log, log  # Hypercorn's line, with the bind address
        yield node
    finally:
        stop_node(node)
        assert not (node.home / "api.json").exists(), "up must remove api.json at exit"


@pytest.mark.slow
def test_status_without_flags_finds_the_node_running_in_this_home(
    terminal: Terminal, keyed_node: RunningNode
) -> None:
    from exoquic.identity.keys import load_or_create_identity

    env = home_env(keyed_node.home, EXOQUIC_API_KEY=keyed_node.api_key or "")
    assert terminal.run(f"{EXOQUIC} status", env, timeout=60) == 0, terminal.screen()
    screen = terminal.screen()
    # The node id, whole, although the table is wider than the terminal.
    assert load_or_create_identity(keyed_node.home).node_id in screen, screen


@pytest.mark.slow
def test_status_without_the_key_says_how_to_give_it(
    terminal: Terminal, keyed_node: RunningNode
) -> None:
    assert terminal.run(f"{EXOQUIC} status", home_env(keyed_node.home), timeout=60) == 1
    screen = " ".join(terminal.screen().split())  # lines wrapped at 60 columns, joined
    assert "this node needs its API key: set EXOQUIC_API_KEY" in screen, screen
    assert "is `exoquic up` running?" not in screen


@pytest.mark.slow
def test_status_with_a_stale_key_says_the_node_has_another(
    terminal: Terminal, keyed_node: RunningNode
) -> None:
    env = home_env(keyed_node.home, EXOQUIC_API_KEY="exq-not-the-key")
    assert terminal.run(f"{EXOQUIC} status", env, timeout=60) == 1
    screen = " ".join(terminal.screen().split())
    assert "refused the API key from EXOQUIC_API_KEY" in screen, screen


def test_status_with_no_node_says_to_start_one(terminal: Terminal, tmp_path: Path) -> None:
    env = home_env(tmp_path / "home")
    assert terminal.run(f"{EXOQUIC} status --api-port 9", env, timeout=60) == 1
    screen = " ".join(terminal.screen().split())
    assert "no node answers at http://127.0.0.1:9" in screen, screen
    assert "start one with `exoquic up`" in screen, screen
