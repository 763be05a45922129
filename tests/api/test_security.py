"""Who may call the API: bind policy, keys, hosts, origins (pure, plus the CLI refusal)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from exoquic.api.security import (
    API_KEY_ENV,
    ApiSecurity,
    InsecureBindError,
    TokenFileError,
    create_token,
    is_loopback,
    local_host_names,
    read_token,
    security_for_bind,
    token_path,
)


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EXOQUIC_HOME", str(tmp_path))
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    return tmp_path


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_binds_need_no_key_and_accept_only_loopback_names(host: str) -> None:
    assert is_loopback(host)
    policy = security_for_bind(host, insecure=False, origins=[])
    assert policy.api_key is None
    assert policy.host_allowed("127.0.0.1:52415") and policy.host_allowed("localhost")
    assert policy.host_allowed("[::1]:52415")
    assert not policy.host_allowed("attacker.example:52415")
    assert not policy.host_allowed("192.168.1.20:52415")
    assert not policy.host_allowed(None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20"])
def test_public_bind_without_key_is_refused(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(InsecureBindError, match="exoquic token"):
        security_for_bind(host, insecure=False, origins=[])


def test_public_bind_takes_the_key_from_env_or_token_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert security_for_bind("0.0.0.0", insecure=False, origins=[]).api_key == "from-env"
    monkeypatch.delenv(API_KEY_ENV)
    token = create_token()
    policy = security_for_bind("0.0.0.0", insecure=False, origins=[])
    assert policy.api_key == token
    assert policy.host_allowed("my-server.tailnet.example")  # the key is the guard


def test_token_file_is_private_and_replaced() -> None:
    first = create_token()
    second = create_token()
    assert first != second and first.startswith("exq-") and len(first) > 40
    assert read_token() == second
    assert stat.S_IMODE(os.stat(token_path()).st_mode) == 0o600


def test_insecure_public_bind_still_refuses_rebinding_names() -> None:
    policy = security_for_bind("0.0.0.0", insecure=True, origins=[])
    assert policy.api_key is None
    assert policy.host_allowed("192.168.1.20:52415")
    assert policy.host_allowed("[fe80::1]:52415")
    assert policy.host_allowed("localhost:52415")
    assert all(policy.host_allowed(name) for name in local_host_names())
    assert not policy.host_allowed("rebind.attacker.example:52415")


def test_keys_compare_exactly() -> None:
    policy = ApiSecurity(api_key="secret")
    assert policy.key_matches("Bearer secret")
    assert policy.key_matches("bearer secret")
    for header in (None, "", "Bearer", "Bearer secre", "Bearer secret2", "Basic secret", "secret"):
        assert not policy.key_matches(header), header
    assert ApiSecurity().key_matches(None)


def test_origins() -> None:
    policy = security_for_bind(
        "127.0.0.1", insecure=False, origins=["https://app.example/", "http://localhost:5173"]
    )
    assert policy.allowed_origins == {"https://app.example", "http://localhost:5173"}
    host = "127.0.0.1:52415"
    assert policy.origin_allowed(None, host)  # curl, SDKs
    assert policy.origin_allowed("http://127.0.0.1:52415", host)  # the node's own UI
    assert policy.origin_allowed("https://app.example", host)
    assert not policy.origin_allowed("https://evil.example", host)
    assert not policy.origin_allowed("null", host)
    assert not policy.origin_allowed("http://127.0.0.1:52415", "evil.example:52415")


def test_cli_refuses_a_public_bind_without_key(tmp_path: Path) -> None:
    exoquic = Path(sys.executable).with_name("exoquic")
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    env["EXOQUIC_HOME"] = str(tmp_path)
    result = subprocess.run(
        [str(exoquic), "up", "--api-host", "0.0.0.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "without an API key" in result.stderr and "--insecure-api" in result.stderr


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o602])
def test_a_token_file_other_users_can_access_is_refused(mode: int) -> None:
    create_token()
    token_path().chmod(mode)
    with pytest.raises(TokenFileError, match=r"accessible by other users.*chmod 600"):
        read_token()
    token_path().chmod(0o600)
    assert read_token() is not None


def test_a_new_token_is_private_even_over_a_loose_leftover(isolated_home: Path) -> None:
    for leftover in (token_path(), token_path().with_suffix(".tmp")):
        leftover.write_text("old\n")
        leftover.chmod(0o666)
    create_token()
    assert stat.S_IMODE(os.stat(token_path()).st_mode) == 0o600


@pytest.mark.parametrize("command", [["up"], ["status"]])
def test_cli_refuses_a_world_readable_token_file(tmp_path: Path, command: list[str]) -> None:
    """The real `exoquic` command stops before serving (or asking) with the fix."""
    exoquic = Path(sys.executable).with_name("exoquic")
    env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
    env["EXOQUIC_HOME"] = str(tmp_path)
    token = tmp_path / "api_token"
    token.write_text("exq-readable-by-everyone\n")
    token.chmod(0o644)
    result = subprocess.run(
        [str(exoquic), *command, "--api-port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "accessible by other users" in result.stderr
    assert f"chmod 600 {token}" in result.stderr
