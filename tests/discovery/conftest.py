"""Fixtures for discovery tests: a network namespace LAN with nodes on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from discovery_netns import NetnsLan, NodeLauncher, new_lan, unavailable_reason


@pytest.fixture
def netns_lan() -> Iterator[NetnsLan]:
    """Three hosts (namespaces) on one bridge; everything is removed afterwards."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    lan = new_lan()
    try:
        try:
            lan.create(3)
        except RuntimeError as exc:
            pytest.skip(f"cannot build network namespaces here: {exc}")
        yield lan
    finally:
        problems = lan.remove()
        assert not problems, f"netns cleanup failed: {problems}"


@pytest.fixture
def launcher(netns_lan: NetnsLan, tmp_path: Path) -> Iterator[NodeLauncher]:
    launcher = NodeLauncher(netns_lan, tmp_path)
    try:
        yield launcher
    finally:
        launcher.stop_all()  # before the namespaces go away
