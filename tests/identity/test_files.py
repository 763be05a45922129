import stat
from pathlib import Path

from exoquic.identity.files import loose_permissions, write_private_file


def test_new_file_is_private_and_complete(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    assert write_private_file(path, b"data", replace=False)
    assert path.read_bytes() == b"data"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not loose_permissions(path)
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_without_replace_an_existing_file_wins(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    write_private_file(path, b"first", replace=False)
    assert not write_private_file(path, b"second", replace=False)
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]


def test_replace_swaps_the_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "store"
    write_private_file(path, b"old", replace=True)
    path.chmod(0o644)
    write_private_file(path, b"new", replace=True)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
