"""`exoquic ps`'s rows from `/api/ps` entries (the command itself runs against a
real node in tests/orchestration/test_on_demand.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from exoquic.cli.ps import expiry_text, model_row

NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("expires_at", "text"),
    [
        ("2318-01-01T00:00:00Z", "never"),
        ("2026-12-07T12:04:12Z", "in 4m 12s"),
        ("2026-12-07T12:00:09.5+00:00", "in 9s"),
        ("2026-12-07T14:30:00Z", "in 2h 30m"),
        ("2026-12-07T11:59:00Z", "now"),
        ("soon", "soon"),
        (None, "?"),
    ],
)
def test_expiry_reads_ollamas_times(expires_at: object, text: str) -> None:
    assert expiry_text(expires_at, NOW) == text


def test_a_row_names_the_nodes_and_their_layers() -> None:
    entry = {
        "name": "llama3.2:1b",
        "model": "llama3.2:1b",
        "default": False,
        "size_needed": 1_300_000_000,
        "running": 2,
        "expires_at": "2026-12-07T12:05:00Z",
        "nodes": [
            {"id": "exq-a", "name": "studio", "layers": [0, 9]},
            {"id": "exq-b", "name": None, "layers": [10, 15]},
        ],
    }
    assert model_row(entry, NOW) == [
        "llama3.2:1b", "studio 0-9, exq-b 10-15", "1.3 GB", "2", "in 5m 0s"
    ]  # fmt: skip
    default = {**entry, "default": True, "expires_at": "2318-01-01T00:00:00Z", "nodes": []}
    assert model_row(default, NOW)[0] == "llama3.2:1b (default)"
    assert model_row(default, NOW)[1] == "-"
    assert model_row(default, NOW)[4] == "never"
    # Held for a ring's peers past this node's own keep-alive: no time is known.
    for_peers = {**entry, "kept_for_peers": True, "expires_at": "2318-01-01T00:00:00Z"}
    assert model_row(for_peers, NOW)[4] == "when its peers let go"
