"""Tailscale discovery against stand-in `tailscale` executables first on PATH."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
import trio

from exoquic.discovery.peers import PeerEvent, PeerEventKind
from exoquic.discovery.tailscale import (
    TailscaleDiscovery,
    TailscaleError,
    parse_tailscale_status,
    read_tailscale_status,
    run_tailscale_discovery,
)
from exoquic.identity.keys import Identity
from exoquic.identity.trust import TrustStore

STUDIO, LAPTOP, STRANGER = Identity.generate(), Identity.generate(), Identity.generate()
PORT = 52417


def device(host: str, ips: list[str], online: bool = True) -> dict[str, object]:
    """One device as `tailscale status --json` (1.7x) prints it."""
    return {
        "ID": f"n{host.encode().hex()}CNTRL",
        "PublicKey": f"nodekey:{host.encode().hex():0<64}",
        "HostName": host,
        "DNSName": f"{host}.tail1234.ts.net.",
        "OS": "linux",
        "UserID": 123,
        "TailscaleIPs": ips,
        "AllowedIPs": [f"{ip}/32" if ":" not in ip else f"{ip}/128" for ip in ips],
        "Addrs": ["192.0.2.10:41641"],
        "CurAddr": "",
        "Relay": "fra",
        "RxBytes": 0,
        "TxBytes": 0,
        "Created": "2024-05-01T10:00:00.000000000Z",
        "LastWrite": "0001-01-01T00:00:00Z",
        "LastSeen": "0001-01-01T00:00:00Z",
        "LastHandshake": "0001-01-01T00:00:00Z",
        "Online": online,
        "ExitNode": False,
        "ExitNodeOption": False,
        "Active": False,
        "PeerAPIURL": [f"http://{ips[0]}:45678"],
        "InNetworkMap": True,
        "InMagicSock": True,
        "InEngine": False,
    }


def status(*peers: dict[str, object], state: str = "Running") -> dict[str, object]:
    me = device("me", ["100.64.0.1", "fd7a:115c:a1e0::1"])
    return {
        "Version": "1.74.1-t0a1b2c3d4-g5e6f7a8b9",
        "TUN": True,
        "BackendState": state,
        "HaveNodeKey": True,
        "AuthURL": "",
        "TailscaleIPs": me["TailscaleIPs"],
        "Self": me,
        "Health": [],
        "MagicDNSSuffix": "tail1234.ts.net",
        "CurrentTailnet": {
            "Name": "user@example.com",
            "MagicDNSSuffix": "tail1234.ts.net",
            "MagicDNSEnabled": True,
        },
        "CertDomains": None,
        "Peer": {p["PublicKey"]: p for p in peers} or None,
        "User": {"123": {"ID": 123, "LoginName": "user@example.com", "DisplayName": "User"}},
        "ClientVersion": None,
    }


TAILNET = status(
    device("studio", ["fd7a:115c:a1e0::2", "100.64.0.2"]),
    device("laptop", ["100.64.0.3"]),
    device("stranger", ["100.64.0.4"]),
    device("printer", ["100.64.0.5"]),  # online, runs no exoquic
    device("old-pi", ["100.64.0.6"], online=False),
)
# What answers an exoquic handshake where: the stand-in for a QUIC probe.
EXOQUIC_AT = {
    "100.64.0.2": STUDIO.public_key,
    "100.64.0.3": LAPTOP.public_key,
    "100.64.0.4": STRANGER.public_key,
}


def install_tailscale(bin_dir: Path, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / "tailscale"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def install_status(tmp_path: Path, document: object, monkeypatch: pytest.MonkeyPatch) -> Path:
    status_file = tmp_path / "status.json"
    status_file.write_text(json.dumps(document, indent=2))
    install_tailscale(
        tmp_path / "bin",
        f'[ "$1 $2" = "status --json" ] || exit 2\ncat "{status_file}"\n',
        monkeypatch,
    )
    return status_file


class Prober:
    def __init__(self) -> None:
        self.probed: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> bytes | None:
        self.probed.append((host, port))
        if host == "100.64.0.5":
            raise ConnectionRefusedError("nothing listens there")
        return EXOQUIC_AT.get(host)


@pytest.fixture
def trust(tmp_path: Path) -> TrustStore:
    store = TrustStore(tmp_path / "trust.json")
    store.add(STUDIO.public_key, "studio")
    store.add(LAPTOP.public_key, "laptop")
    return store


def test_parse_keeps_what_discovery_needs() -> None:
    parsed = parse_tailscale_status(json.dumps(TAILNET))
    assert parsed.backend_state == "Running"
    assert parsed.self_device is not None
    assert parsed.self_device.addresses == ("100.64.0.1", "fd7a:115c:a1e0::1")
    studio = parsed.peers[0]
    assert (studio.host_name, studio.online) == ("studio", True)
    assert studio.addresses == ("100.64.0.2", "fd7a:115c:a1e0::2")  # IPv4 first
    assert parse_tailscale_status(json.dumps(status())).peers == ()  # "Peer": null


async def test_trusted_exoquic_devices_become_peers(
    tmp_path: Path, trust: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_status(tmp_path, TAILNET, monkeypatch)
    prober = Prober()
    discovery = TailscaleDiscovery(trust, prober, port=PORT)
    events = await discovery.poll()
    assert {(e.kind, e.peer.node_id) for e in events} == {
        (PeerEventKind.APPEARED, STUDIO.node_id),
        (PeerEventKind.APPEARED, LAPTOP.node_id),
    }
    studio = discovery.peers()[STUDIO.node_id]
    assert studio.addresses == ("100.64.0.2", "fd7a:115c:a1e0::2")
    assert (studio.port, studio.source, studio.name) == (PORT, "tailscale", "studio")
    assert studio.public_key == STUDIO.public_key
    # Offline devices and ourselves are not probed.
    assert sorted(prober.probed) == [(f"100.64.0.{i}", PORT) for i in (2, 3, 4, 5)]


async def test_device_going_offline_expires(
    tmp_path: Path, trust: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    status_file = install_status(tmp_path, TAILNET, monkeypatch)
    discovery = TailscaleDiscovery(trust, Prober(), port=PORT)
    await discovery.poll()
    status_file.write_text(json.dumps(status(device("studio", ["100.64.0.2"], online=False))))
    events = await discovery.poll()
    assert {(e.kind, e.peer.node_id) for e in events} == {
        (PeerEventKind.EXPIRED, STUDIO.node_id),
        (PeerEventKind.EXPIRED, LAPTOP.node_id),
    }


@pytest.mark.parametrize(
    ("script", "message"),
    [
        (
            "echo 'failed to connect to local tailscaled; it doesn'\"'\"'t appear to be running"
            " (sudo systemctl start tailscaled ?)' >&2\nexit 1\n",
            "failed: failed to connect to local tailscaled",
        ),
        ("echo 'not json'\n", "not JSON"),
        ("sleep 5\n", "did not answer within 0.3 s"),
    ],
)
async def test_failing_tailscale_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, message: str
) -> None:
    install_tailscale(tmp_path / "bin", script, monkeypatch)
    with pytest.raises(TailscaleError, match=message):
        await read_tailscale_status(timeout=0.3)


async def test_unrunnable_binary_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tailscale").write_bytes(b"\x7fELF garbage")
    (bin_dir / "tailscale").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(TailscaleError, match="cannot run 'tailscale'"):
        await read_tailscale_status()


async def test_stopped_backend_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_status(tmp_path, status(state="NeedsLogin"), monkeypatch)
    with pytest.raises(TailscaleError, match=r"not connected \(state NeedsLogin\)"):
        await read_tailscale_status()


async def test_missing_binary_warns_once_and_keeps_running(
    trust: TrustStore, caplog: pytest.LogCaptureFixture
) -> None:
    discovery = TailscaleDiscovery(trust, Prober(), port=PORT, binary="no-such-tailscale-binary")
    with caplog.at_level(logging.WARNING):
        assert await discovery.poll() == []
        assert await discovery.poll() == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "tailscale discovery: 'no-such-tailscale-binary' is not installed (not found on PATH);"
        " retrying in the background"
    ]


async def test_run_reports_events_on_a_channel(
    tmp_path: Path, trust: TrustStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_status(tmp_path, TAILNET, monkeypatch)
    send, receive = trio.open_memory_channel[PeerEvent](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_tailscale_discovery(
                trust, Prober(), send, port=PORT, task_status=task_status
            )
        )
        with trio.fail_after(5):
            found = {(await receive.receive()).peer.node_id for _ in range(2)}
        assert found == {STUDIO.node_id, LAPTOP.node_id}
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    "hostile",
    [
        '{"Peer": {"k": ' + "[" * 100_000,  # nested deeper than the parser recurses
        json.dumps(status(device("studio", ["100.64.0.2"]) | {"TailscaleIPs": 5})),
        json.dumps(status(device("studio", ["100.64.0.2"]) | {"TailscaleIPs": True})),
    ],
)
async def test_hostile_status_output_does_not_stop_discovery(
    tmp_path: Path,
    trust: TrustStore,
    monkeypatch: pytest.MonkeyPatch,
    hostile: str,
) -> None:
    """A real stand-in `tailscale` process prints hostile JSON; discovery keeps
    polling and finds the peers once the output is valid again."""
    status_file = install_status(tmp_path, TAILNET, monkeypatch)
    status_file.write_text(hostile)
    send, receive = trio.open_memory_channel[PeerEvent](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_tailscale_discovery(
                trust, Prober(), send, port=PORT, poll_interval=0.05, task_status=task_status
            )
        )
        await trio.sleep(0.3)  # several polls of the hostile output
        status_file.write_text(json.dumps(TAILNET))
        with trio.fail_after(5):
            found = {(await receive.receive()).peer.node_id for _ in range(2)}
        assert found == {STUDIO.node_id, LAPTOP.node_id}
        nursery.cancel_scope.cancel()


def test_mistyped_device_fields_are_left_out() -> None:
    odd = device("studio", ["100.64.0.2"]) | {"HostName": {"a": 1}, "TailscaleIPs": "100.64.0.9"}
    [studio] = parse_tailscale_status(json.dumps(status(odd))).peers
    assert (studio.host_name, studio.addresses, studio.online) == ("", (), True)
