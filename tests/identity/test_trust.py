import json
import multiprocessing
import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exoquic.identity.keys import Identity
from exoquic.identity.trust import (
    TRUST_FILENAME,
    TrustConflictError,
    TrustedPeer,
    TrustStore,
    TrustStoreError,
)

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> TrustStore:
    return TrustStore.open(tmp_path)


def test_empty_store_trusts_nobody(store: TrustStore) -> None:
    assert store.list() == []
    assert not store.is_trusted(Identity.generate().public_key)
    assert not store.path.exists()


def test_added_key_is_trusted_and_persisted(store: TrustStore, tmp_path: Path) -> None:
    peer = Identity.generate()
    added = store.add(peer.public_key, "laptop", now=T0)
    assert added == TrustedPeer(peer.node_id, "laptop", peer.public_key, T0)
    assert store.is_trusted(peer.public_key)
    assert not store.is_trusted(Identity.generate().public_key)
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert TrustStore.open(tmp_path).list() == [added]
    # No temporary file is left behind (the lock file stays, empty, for the next writer).
    assert sorted(p.name for p in tmp_path.iterdir()) == [TRUST_FILENAME, TRUST_FILENAME + ".lock"]


def test_file_format(store: TrustStore) -> None:
    peer = Identity.generate()
    store.add(peer.public_key, "laptop", now=T0)
    document = json.loads(store.path.read_text())
    assert document == {
        "version": 1,
        "peers": [
            {
                "node_id": peer.node_id,
                "name": "laptop",
                "public_key": peer.public_key.hex(),
                "added_at": "2026-01-02T03:04:05+00:00",
            }
        ],
    }


def test_add_by_id_trusts_the_key_that_hashes_to_it(store: TrustStore) -> None:
    peer, impostor = Identity.generate(), Identity.generate()
    store.add_by_id(peer.node_id.lower(), "desktop")
    assert store.get(peer.node_id) is not None
    assert store.get(peer.node_id).public_key is None  # type: ignore[union-attr]
    assert store.is_trusted(peer.public_key)
    assert store.is_trusted(peer.public_key)
    assert not store.is_trusted(impostor.public_key)
    pinned = store.pin_key(peer.public_key)
    assert pinned.public_key == peer.public_key
    assert TrustStore(store.path).get(peer.node_id) == pinned


def test_add_by_id_checks_the_id(store: TrustStore) -> None:
    node_id = Identity.generate().node_id
    typo = node_id[:-1] + ("A" if node_id[-1] != "A" else "B")
    with pytest.raises(ValueError, match="check symbol"):
        store.add_by_id(typo, "desktop")


def test_add_by_id_keeps_a_pinned_key(store: TrustStore) -> None:
    peer = Identity.generate()
    store.add(peer.public_key, "laptop")
    store.add_by_id(peer.node_id, "renamed")
    entry = store.get(peer.node_id)
    assert entry is not None and entry.public_key == peer.public_key and entry.name == "renamed"


def test_known_name_with_a_different_key_is_refused(store: TrustStore) -> None:
    laptop, impostor = Identity.generate(), Identity.generate()
    store.add(laptop.public_key, "laptop")
    with pytest.raises(TrustConflictError, match="exoquic trust remove"):
        store.add(impostor.public_key, "Laptop")
    with pytest.raises(TrustConflictError):
        store.add_by_id(impostor.node_id, "laptop")
    assert not store.is_trusted(impostor.public_key)


def test_pin_key_refuses_untrusted_keys(store: TrustStore) -> None:
    with pytest.raises(TrustConflictError):
        store.pin_key(Identity.generate().public_key)


def test_re_adding_a_key_renames_it(store: TrustStore) -> None:
    peer = Identity.generate()
    store.add(peer.public_key, "laptop", now=T0)
    renamed = store.add(peer.public_key, "old laptop")
    assert renamed.name == "old laptop" and renamed.added_at == T0
    assert len(store.list()) == 1


def test_remove_revokes(store: TrustStore) -> None:
    peer = Identity.generate()
    store.add(peer.public_key, "laptop")
    assert store.remove(peer.node_id).name == "laptop"
    assert not store.is_trusted(peer.public_key)
    assert not TrustStore(store.path).is_trusted(peer.public_key)
    with pytest.raises(KeyError):
        store.remove(peer.node_id)


def test_changes_from_another_process_are_not_lost(store: TrustStore) -> None:
    a, b = Identity.generate(), Identity.generate()
    other = TrustStore(store.path)
    store.add(a.public_key, "a")
    other.add(b.public_key, "b")  # re-reads before writing, so "a" survives
    assert {p.name for p in TrustStore(store.path).list()} == {"a", "b"}


@pytest.mark.parametrize("name", ["", " padded", "x" * 65, "tab\there"])
def test_bad_names_are_rejected(store: TrustStore, name: str) -> None:
    with pytest.raises(ValueError, match="device name"):
        store.add(Identity.generate().public_key, name)


def test_broken_json_names_the_line(store: TrustStore) -> None:
    _write(store, '{\n  "version": 1,\n  "peers": [,]\n}\n')
    with pytest.raises(TrustStoreError, match="line 3"):
        store.reload()


def test_tampered_key_is_caught(store: TrustStore) -> None:
    peer, other = Identity.generate(), Identity.generate()
    store.add(peer.public_key, "laptop")
    document = json.loads(store.path.read_text())
    document["peers"][0]["public_key"] = other.public_key.hex()
    _write(store, json.dumps(document))
    with pytest.raises(TrustStoreError, match=r"peer #1 is invalid: public key does not match"):
        store.reload()


@pytest.mark.parametrize(
    ("document", "match"),
    [
        ([], "expected"),
        ({"version": 2, "peers": []}, "expected"),
        ({"version": 1, "peers": {}}, "must be a list"),
        ({"version": 1, "peers": [1]}, "peer #1 is invalid"),
        ({"version": 1, "peers": [{"node_id": 1}]}, "peer #1 is invalid"),
    ],
)
def test_malformed_documents(store: TrustStore, document: object, match: str) -> None:
    _write(store, json.dumps(document))
    with pytest.raises(TrustStoreError, match=match):
        store.reload()


def test_duplicate_entries_are_refused(store: TrustStore) -> None:
    store.add(Identity.generate().public_key, "laptop")
    document = json.loads(store.path.read_text())
    document["peers"].append(dict(document["peers"][0], name="again"))
    _write(store, json.dumps(document))
    with pytest.raises(TrustStoreError, match="listed twice"):
        store.reload()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_writable_by_others_is_refused(store: TrustStore) -> None:
    store.add(Identity.generate().public_key, "laptop")
    store.path.chmod(0o666)
    with pytest.raises(TrustStoreError, match="chmod 600"):
        store.reload()


def _write(store: TrustStore, text: str) -> None:
    store.path.write_text(text)
    store.path.chmod(0o600)


def _add_many(path: str, count: int) -> None:
    store = TrustStore(Path(path))
    for _ in range(count):
        key = Identity.generate().public_key
        store.add(key, f"peer-{key.hex()[:12]}")


def test_writers_in_other_processes_lose_nothing(store: TrustStore) -> None:
    # `exoquic pair` racing `trust remove` (or a running node pinning a key): each
    # read-modify-write holds the store's lock, so no change overwrites another.
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_add_many, args=(str(store.path), 25)) for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    store.reload()
    assert len(store.list()) == 100


def test_reload_if_changed_sees_other_processes_only(store: TrustStore, tmp_path: Path) -> None:
    assert not store.reload_if_changed()
    store.add(Identity.generate().public_key, "laptop")
    assert not store.reload_if_changed()  # our own write
    other = TrustStore.open(tmp_path)
    peer = Identity.generate()
    other.add(peer.public_key, "phone")
    assert store.reload_if_changed() and store.is_trusted(peer.public_key)
    other.remove(peer.node_id)
    assert store.reload_if_changed() and not store.is_trusted(peer.public_key)
