"""The parser: built from the command modules, fast to build, defaults from one place."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from exoquic import defaults
from exoquic.cli.main import COMMANDS, build_parser

EXOQUIC = str(Path(sys.executable).with_name("exoquic"))

# What `exoquic --help` must not wait for: each takes from 0.1 to several seconds to import.
HEAVY = ("trio", "spake2", "psutil", "httpx", "rich", "cryptography", "aioquic", "numpy",
         "tinygrad", "mlx", "huggingface_hub", "quart", "hypercorn")  # fmt: skip


def exoquic(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command, its help unwrapped."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([EXOQUIC, *args], capture_output=True, text=True, check=True, env=env)


def test_building_the_parser_imports_nothing_heavy() -> None:
    probe = (
        "import sys; from exoquic.cli.main import build_parser; build_parser(); "
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == []


def leaves(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The parsers that run something: `parser` itself, or those of its subcommands."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        return [parser]
    return [leaf for g in groups for sub in g.choices.values() for leaf in leaves(sub)]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_module_registers_commands_with_handlers(name: str) -> None:
    parser = argparse.ArgumentParser(prog="exoquic")
    importlib.import_module(f"exoquic.cli.{name}").register(parser.add_subparsers())
    commands = leaves(parser)
    assert commands != [parser]
    for command in commands:
        assert callable(command.get_default("handler")), command.prog


def test_help_lists_every_command_and_the_shared_defaults() -> None:
    result = exoquic("--help")
    listed = re.findall(r"^    (\S+) ", result.stdout, re.MULTILINE)
    registered = {command.prog.split()[1] for command in leaves(build_parser())}
    assert set(listed) == registered and len(listed) >= len(COMMANDS)
    up = exoquic("up", "--help")
    for value in (defaults.API_PORT, defaults.NODE_PORT, defaults.MAX_CONTEXT):
        assert f"(default: {value})" in up.stdout


@pytest.mark.parametrize("command", ["up", "run"])
def test_weights_choices_are_the_loaders(command: str) -> None:
    from exoquic.models.hf_loader import HF_WEIGHTS

    text = exoquic(command, "--help").stdout
    listed = re.search(r"--weights \{([^}]*)\}", text)
    assert listed is not None, text
    assert tuple(listed.group(1).split(",")) == HF_WEIGHTS
