"""Residency: keep-alive expiry, reservations and LRU unloading, with time passed by hand."""

from __future__ import annotations

import pytest

from exoquic.orchestration.residency import (
    DEFAULT_KEEP_ALIVE_S,
    RESERVATION_S,
    Residency,
    parse_keep_alive,
)

MB = 1_000_000


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("10s", 10.0),
        ("1.5s", 1.5),
        ("300ms", 0.3),
        ("2h", 7200.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("300", 300.0),
        (42, 42.0),
        (2.5, 2.5),
        (0, 0.0),
        ("-1", None),
        ("-5m", None),
        (-1, None),
    ],
)
def test_keep_alive_parses_like_ollama(value: object, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["", "5 minutes", "m", "5x", "5m3", True, None, [5], "nan"])
def test_bad_keep_alive_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="keep_alive"):
        parse_keep_alive(value)


def loaded(*models: tuple[str, int, float], capacity: int = 1000 * MB) -> Residency:
    """A residency with (model, size in MB, loaded at) each, keep-alive 60 s."""
    residency = Residency(capacity)
    for model_id, size, at in models:
        residency.add(model_id, size * MB, at, 60.0)
    return residency


def test_an_idle_model_expires_after_its_keep_alive() -> None:
    residency = loaded(("a", 100, 0.0))
    assert residency.next_deadline(0.0) == 60.0
    assert residency.expired(59.9) == []
    assert residency.expired(60.0) == ["a"]


def test_the_keep_alive_counts_from_the_end_of_the_last_request() -> None:
    residency = loaded(("a", 100, 0.0))
    residency.reserve("a", 10.0)
    residency.started("a", 11.0)
    assert residency.expired(500.0) == []  # running: never unloaded under a request
    assert residency.next_deadline(500.0) is None
    residency.finished("a", 500.0)
    assert residency.expired(559.0) == []
    assert residency.expired(560.0) == ["a"]


def test_a_reservation_holds_the_model_until_it_lapses() -> None:
    residency = loaded(("a", 100, 0.0))
    residency.reserve("a", 0.0, keep_alive=0.0)  # e.g. keep_alive 0, still tokenizing
    assert residency.expired(1.0) == []
    assert residency.next_deadline(1.0) == RESERVATION_S
    assert residency.expired(RESERVATION_S) == ["a"]  # never started: it lapsed


def test_keep_alive_zero_unloads_right_after_the_request() -> None:
    residency = loaded(("a", 100, 0.0))
    residency.reserve("a", 5.0, keep_alive=0.0)
    residency.started("a", 5.1)
    assert residency.expired(5.5) == []
    residency.finished("a", 6.0)
    assert residency.expired(6.0) == ["a"]


def test_one_request_ending_does_not_free_another_ones_reservation() -> None:
    residency = loaded(("a", 100, 0.0))
    residency.reserve("a", 1.0, keep_alive=0.0)
    residency.reserve("a", 1.5)  # a second request, still tokenizing
    residency.started("a", 2.0)
    residency.finished("a", 3.0)
    assert residency.expired(3.0) == []
    residency.started("a", 3.5)
    residency.finished("a", 4.0)
    assert residency.expired(4.0) == ["a"]


def test_a_load_only_call_gives_its_reservation_back() -> None:
    residency = loaded(("a", 100, 0.0))
    residency.reserve("a", 1.0, keep_alive=0.0)
    residency.unreserve("a", 1.2)
    assert residency.expired(1.2) == ["a"]


def test_negative_keep_alive_keeps_forever_and_the_default_is_pinned() -> None:
    residency = Residency(1000 * MB)
    residency.add("default", 100 * MB, 0.0, None, pinned=True)
    residency.add("b", 100 * MB, 0.0, 10.0)
    residency.reserve("default", 1.0, keep_alive=0.0)  # ignored for a pinned model
    residency.unreserve("default", 1.0)
    residency.reserve("b", 1.0, keep_alive=parse_keep_alive(-1))
    residency.unreserve("b", 1.0)
    assert residency.expired(1e9) == []
    assert residency.next_deadline(1e9) is None
    assert residency.get("b").expiry(5.0) is None  # type: ignore[union-attr]


def test_a_request_keep_alive_replaces_the_models_and_none_keeps_it() -> None:
    residency = loaded(("a", 100, 0.0))
    residency.reserve("a", 0.0, keep_alive=600.0)
    residency.unreserve("a", 0.0)
    residency.reserve("a", 1.0)  # no keep_alive of its own: 600 s stays
    residency.unreserve("a", 1.0)
    assert residency.get("a").expiry(2.0) == 601.0  # type: ignore[union-attr]


def test_evictions_pick_the_least_recently_used_idle_models() -> None:
    residency = loaded(("a", 300, 0.0), ("b", 300, 0.0), ("c", 300, 0.0))
    for model_id, at in (("b", 1.0), ("a", 2.0), ("c", 3.0)):
        residency.reserve(model_id, at)
        residency.started(model_id, at)
        residency.finished(model_id, at)
    assert residency.evictions(100 * MB, 4.0) == []  # 100 MB free already
    assert residency.evictions(350 * MB, 4.0) == ["b"]
    assert residency.evictions(700 * MB, 4.0) == ["b", "a"]
    assert residency.evictions(1001 * MB, 4.0) is None  # more than the node has


def test_busy_and_pinned_models_are_never_evicted() -> None:
    residency = Residency(1000 * MB)
    residency.add("default", 400 * MB, 0.0, None, pinned=True)
    residency.add("busy", 300 * MB, 0.0, 60.0)
    residency.add("idle", 200 * MB, 5.0, 60.0)
    residency.reserve("busy", 1.0)
    residency.started("busy", 1.0)
    assert residency.evictions(300 * MB, 6.0) == ["idle"]
    assert residency.evictions(400 * MB, 6.0) is None  # only "busy" could make room
    residency.finished("busy", 7.0)
    assert residency.evictions(400 * MB, 8.0) == ["idle", "busy"]


def test_residents_list_the_pinned_model_first_then_the_most_recent() -> None:
    residency = Residency(1000 * MB)
    residency.add("old", 1, 1.0, DEFAULT_KEEP_ALIVE_S)
    residency.add("default", 1, 0.0, None, pinned=True)
    residency.add("new", 1, 2.0, DEFAULT_KEEP_ALIVE_S)
    assert [r.model_id for r in residency.residents()] == ["default", "new", "old"]
    assert residency.used == 3
    residency.remove("new")
    assert "new" not in residency
