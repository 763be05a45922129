"""`exoquic pair` and `exoquic trust` as real processes, each device with its own home."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fixtures.cli_in_process import run_commands, use_home

from exoquic.cli import pair, trust
from exoquic.cli.pair import parse_address
from exoquic.cli.trust import key_fingerprint
from exoquic.identity.keys import Identity, load_or_create_identity
from exoquic.identity.trust import TrustStore
from exoquic.pairing.protocol import PairingCode

pytestmark = pytest.mark.timeout(60)

EXOQUIC = [sys.executable, "-c", "from exoquic.cli import main; main()"]


def environment(home: Path) -> dict[str, str]:
    return {**os.environ, "EXOQUIC_HOME": str(home), "COLUMNS": "200"}


def exoquic(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EXOQUIC, *args], env=environment(home), capture_output=True, text=True, timeout=50
    )


def start(home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*EXOQUIC, *args],
        env=environment(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def lan_options(port: int) -> list[str]:
    return ["--interfaces", "lo", "--multicast-port", str(port)]


@contextmanager
def showing_code(home: Path, *options: str) -> Iterator[tuple[subprocess.Popen[str], str, int]]:
    """`exoquic pair` showing a code: (process, code, port) once it waits."""
    process = start(home, "pair", "--name", "desk", *options)
    try:
        assert process.stdout is not None
        shown = ""
        while "Waiting" not in shown:
            line = process.stdout.readline()
            assert line, f"exoquic pair exited early: {process.communicate()}"
            shown += line
        code = re.search(r"Pairing code: (\S+)", shown)
        port = re.search(r"UDP port (\d+)", shown)
        assert code and port, shown
        yield process, code.group(1), int(port.group(1))
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=30)
    return process.returncode, out, err


def test_pair_finds_the_other_process_on_the_lan(tmp_path: Path, multicast_port: int) -> None:
    desk_home, laptop_home = tmp_path / "desk", tmp_path / "laptop"
    with showing_code(desk_home, *lan_options(multicast_port)) as (shower, code, _):
        typed = exoquic(laptop_home, "pair", code, "--name", "laptop", *lan_options(multicast_port))
        assert typed.returncode == 0, typed.stderr
        status, shown, errors = finish(shower)
        assert status == 0, errors
    desk, laptop = load_or_create_identity(desk_home), load_or_create_identity(laptop_home)
    assert f"Paired with: desk  {desk.node_id}" in typed.stdout
    assert f"Paired with: laptop  {laptop.node_id}" in shown
    assert [(p.node_id, p.name) for p in TrustStore.open(desk_home).list()] == [
        (laptop.node_id, "laptop")
    ]
    assert [(p.public_key, p.name) for p in TrustStore.open(laptop_home).list()] == [
        (desk.public_key, "desk")
    ]


def test_wrong_code_burns_it_and_says_so(tmp_path: Path, multicast_port: int) -> None:
    desk_home, laptop_home = tmp_path / "desk", tmp_path / "laptop"
    with showing_code(desk_home, *lan_options(multicast_port)) as (shower, code, port):
        while (wrong := PairingCode.generate(0.0).text) == code:
            pass
        typed = exoquic(laptop_home, "pair", wrong, "--addr", f"127.0.0.1:{port}")
        assert typed.returncode == 1
        assert "refused the pairing" in typed.stderr and "used up" in typed.stderr
        status, _, errors = finish(shower)
        assert status == 1 and "could not prove it knows the code" in errors
    assert TrustStore.open(desk_home).list() == TrustStore.open(laptop_home).list() == []


def test_expired_code_and_nobody_found(
    tmp_path: Path, multicast_port: int, other_multicast_port: int
) -> None:
    code = PairingCode.generate(0.0).text
    shower = start(tmp_path / "desk", "pair", "--lifetime", "0.5", *lan_options(multicast_port))
    lan = lan_options(other_multicast_port)  # the shower is not there
    typed = start(tmp_path / "laptop", "pair", code, "--wait", "0.5", *lan)
    status, _, errors = finish(shower)
    assert status == 1 and "expired before any device used it" in errors
    status, _, errors = finish(typed)
    assert status == 1
    assert "no device showing a pairing code was found on the LAN within 0.5 s" in errors


def test_trust_add_list_remove(tmp_path: Path) -> None:
    home = tmp_path / "home"
    studio, desk = Identity.generate(), Identity.generate()
    added = exoquic(home, "trust", "add", studio.node_id.lower(), "--name", "studio")
    assert added.returncode == 0, added.stderr
    assert "pinned when it first connects" in added.stdout
    TrustStore.open(home).add(desk.public_key, "desk")  # as pairing would

    listed = exoquic(home, "trust", "list").stdout
    studio_row = next(line for line in listed.splitlines() if studio.node_id in line)
    assert "studio" in studio_row and "pinned at first connection" in studio_row
    desk_row = next(line for line in listed.splitlines() if desk.node_id in line)
    assert "desk" in desk_row and key_fingerprint(desk.public_key) in desk_row

    removed = exoquic(home, "trust", "remove", studio.node_id)
    assert removed.returncode == 0 and "No longer trusting" in removed.stdout
    assert [p.node_id for p in TrustStore.open(home).list()] == [desk.node_id]


# The error paths, in process (each subprocess costs seconds of imports on a busy machine).


def run(argv: list[str]) -> int:
    return run_commands(argv, pair, trust)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return use_home(tmp_path, monkeypatch)


def test_trust_mistakes_are_explained(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    studio, other = Identity.generate(), Identity.generate()
    assert run(["trust", "list"]) == 0
    assert "No trusted devices" in capsys.readouterr().out
    assert run(["trust", "add", studio.node_id]) == 0
    entry = TrustStore.open(home).get(studio.node_id)
    assert entry is not None and entry.name == studio.node_id
    assert run(["trust", "add", studio.node_id, "--name", "studio"]) == 0  # renames
    capsys.readouterr()
    assert run(["trust", "add", other.node_id, "--name", "STUDIO"]) == 1
    assert "refusing to trust" in capsys.readouterr().err
    assert run(["trust", "add", "exq-0000-0000"]) == 2
    assert "node id" in capsys.readouterr().err
    assert run(["trust", "add", other.node_id, "--name", " padded "]) == 2
    assert run(["trust", "remove", other.node_id]) == 1
    assert "not a trusted device" in capsys.readouterr().err
    assert run(["trust", "rm", "nonsense"]) == 2
    assert [(p.node_id, p.name) for p in TrustStore.open(home).list()] == [
        (studio.node_id, "studio")
    ]


def test_pair_mistakes_are_caught_before_the_network(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = PairingCode.generate(0.0).text
    typo = code[:-1] + ("0" if code[-1] != "0" else "1")
    assert run(["pair", typo, "--addr", "127.0.0.1:9"]) == 2
    assert "mistyped" in capsys.readouterr().err
    assert run(["pair", "--addr", "127.0.0.1:9"]) == 2
    assert run(["pair", code, "--name", ""]) == 2
    with pytest.raises(SystemExit):
        run(["pair", code, "--addr", "127.0.0.1"])
    assert not home.exists() or not (home / "identity.pem").exists()


def test_addresses_parse() -> None:
    assert parse_address("192.0.2.5:41234") == ("192.0.2.5", 41234)
    assert parse_address("[fe80::1]:7") == ("fe80::1", 7)
    assert parse_address("desk.local:52416") == ("desk.local", 52416)
    for bad in ("192.0.2.5", ":80", "host:0", "host:99999", "host:port"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_address(bad)
