"""Fixtures for pairing tests: multicast confined to loopback, on a free port."""

from __future__ import annotations

import socket

import pytest

from exoquic.discovery.multicast import MulticastSettings


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def multicast_port() -> int:
    """A UDP port for this test's multicast group (not the real 52416)."""
    return _free_udp_port()


@pytest.fixture
def other_multicast_port() -> int:
    """A second group port, for devices that must not hear each other."""
    return _free_udp_port()


@pytest.fixture
def multicast(multicast_port: int) -> MulticastSettings:
    # Loopback only: test announcements never leave this host.
    return MulticastSettings(
        port=multicast_port, interval=0.2, fast_interval=0.1, interfaces=("lo",)
    )
