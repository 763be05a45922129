"""api.json: how local clients find the node running in their home."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from exoquic.local_api import (
    LocalApi,
    advertised,
    api_file,
    browser_urls,
    connect_host,
    find_local_api,
)


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EXOQUIC_HOME", str(tmp_path))
    return tmp_path


def test_clients_dial_loopback_for_an_api_on_every_address() -> None:
    assert connect_host("0.0.0.0") == "127.0.0.1"
    assert connect_host("::") == "::1"
    assert connect_host("192.0.2.7") == "192.0.2.7"
    assert connect_host("localhost") == "localhost"


def test_browser_urls_name_addresses_a_browser_can_open() -> None:
    assert browser_urls("127.0.0.1", 52415) == ["http://127.0.0.1:52415/"]
    assert browser_urls("::1", 80) == ["http://[::1]:80/"]
    every = browser_urls("0.0.0.0", 52415)
    assert every[0] == "http://127.0.0.1:52415/"
    assert all("0.0.0.0" not in url for url in every)
    assert all(":" not in url.split("//")[1].split(":")[0] for url in every)  # IPv4 only


def test_advertised_while_running_and_removed_after(home: Path) -> None:
    with advertised("0.0.0.0", 6000, key_required=True) as api:
        assert find_local_api() == api == LocalApi("http://127.0.0.1:6000", api.pid, True)
        assert oct(api_file().stat().st_mode & 0o777) == "0o600"
    assert not api_file().exists()
    assert find_local_api() is None


def test_a_file_left_by_a_dead_node_is_ignored(home: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    data = {"url": "http://127.0.0.1:6000", "pid": int(dead.stdout), "key_required": False}
    api_file().write_text(json.dumps(data))
    assert find_local_api() is None


@pytest.mark.parametrize("text", ["", "{", "[]", '{"url": "x"}', '{"url": 1, "pid": "a"}'])
def test_a_broken_file_is_ignored(home: Path, text: str) -> None:
    api_file().write_text(text)
    assert find_local_api() is None


def test_a_newer_node_of_the_same_home_keeps_its_file(home: Path) -> None:
    with advertised("127.0.0.1", 6000, key_required=False):
        with advertised("127.0.0.1", 6001, key_required=False):
            pass  # the inner one removes its own file on exit
        assert find_local_api() is None
    with advertised("127.0.0.1", 6000, key_required=False):
        newer = {"url": "http://127.0.0.1:6001", "pid": 1, "key_required": False}
        api_file().write_text(json.dumps(newer))
    assert api_file().exists()  # not ours any more: left alone
