import os
import stat
from pathlib import Path

import pytest

from exoquic.identity.keys import (
    KEY_FILENAME,
    Identity,
    IdentityError,
    load_or_create_identity,
    verify_signature,
)
from exoquic.identity.node_id import node_id_from_public_key


def test_first_start_creates_a_private_key_file(tmp_path: Path) -> None:
    identity = load_or_create_identity(tmp_path)
    key_file = tmp_path / KEY_FILENAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert len(identity.public_key) == 32
    assert identity.node_id == node_id_from_public_key(identity.public_key)
    assert [p.name for p in tmp_path.iterdir()] == [KEY_FILENAME]  # no temp file left


def test_second_start_loads_the_same_identity(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path)
    second = load_or_create_identity(tmp_path)
    assert first.public_key == second.public_key
    assert first.node_id == second.node_id


def test_two_homes_two_ids(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = load_or_create_identity(tmp_path / "a")
    b = load_or_create_identity(tmp_path / "b")
    assert a.node_id != b.node_id


def test_default_home_comes_from_exoquic_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXOQUIC_HOME", str(tmp_path))
    identity = load_or_create_identity()
    assert (tmp_path / KEY_FILENAME).exists()
    assert load_or_create_identity(tmp_path).node_id == identity.node_id


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_loose_permissions_are_refused_with_the_fix(tmp_path: Path) -> None:
    load_or_create_identity(tmp_path)
    (tmp_path / KEY_FILENAME).chmod(0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        load_or_create_identity(tmp_path)


def test_corrupt_key_file_is_a_clear_error(tmp_path: Path) -> None:
    key_file = tmp_path / KEY_FILENAME
    key_file.write_bytes(b"not a key")
    key_file.chmod(0o600)
    with pytest.raises(IdentityError, match="not a readable PEM key"):
        load_or_create_identity(tmp_path)


def test_unreadable_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / KEY_FILENAME).mkdir(mode=0o700)  # unreadable as a file, even for root
    with pytest.raises(IdentityError, match="cannot read identity key"):
        load_or_create_identity(tmp_path)


def test_signatures_verify_only_for_the_right_key_and_data() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    signature = alice.sign(b"hello")
    assert verify_signature(alice.public_key, signature, b"hello")
    assert not verify_signature(alice.public_key, signature, b"hellO")
    assert not verify_signature(bob.public_key, signature, b"hello")
    assert not verify_signature(b"short", signature, b"hello")


def test_repr_hides_the_private_key() -> None:
    identity = Identity.generate()
    assert repr(identity) == f"Identity(node_id={identity.node_id!r})"


def test_missing_home_is_created(tmp_path: Path) -> None:
    identity = load_or_create_identity(tmp_path / "new" / "home")
    assert (tmp_path / "new" / "home" / KEY_FILENAME).exists()
    assert load_or_create_identity(tmp_path / "new" / "home").node_id == identity.node_id


def test_uncreatable_key_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(IdentityError, match="cannot create identity key"):
        load_or_create_identity(tmp_path / "file")
