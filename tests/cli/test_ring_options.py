"""The ring's command-line parts: sizes, `exoquic up`'s cluster options, and the
status table (pure)."""

from __future__ import annotations

import argparse

import pytest

from exoquic.cli.main import build_parser
from exoquic.cli.options import parse_size
from exoquic.cli.status import print_topology


@pytest.mark.parametrize(
    ("text", "size"),
    [("1000", 1000), ("100M", 100 << 20), ("1.5G", 3 << 29), ("200MiB", 200 << 20),
     ("4k", 4096), ("2 GB", 2 << 30)],
)  # fmt: skip
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "-1G", "12Q", "1e3"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_up_takes_the_cluster_options() -> None:
    args = build_parser().parse_args(
        ["up", "--peers", "p.json", "--node-port", "6000", "--name", "studio",
         "--discovery", "manual", "--memory-limit", "2G", "--peer-timeout", "1.5"]
    )  # fmt: skip
    assert (args.node_port, args.name, args.discovery) == (6000, "studio", "manual")
    assert args.memory_limit == 2 << 30 and args.peer_timeout == 1.5


def test_status_prints_every_node_in_ring_order(capsys: pytest.CaptureFixture[str]) -> None:
    topology = {
        "model": "smollm2-135m-instruct", "num_layers": 30, "plan_version": 4,
        "status": "serving", "reason": None,
        "nodes": [
            {"id": "exq-A", "name": "studio", "self": True, "live": True, "engine": "mlx",
             "memory": {"usable": 8 << 30}, "layers": [0, 19], "address": None},
            {"id": "exq-B", "name": "laptop", "self": False, "live": True, "engine": "tinygrad",
             "memory": {"usable": 300 << 20}, "layers": [20, 29], "address": "10.0.0.2:52417"},
        ],
        "stats": {"ring": {"steps": 10, "step_seconds": 1.0}},
    }  # fmt: skip
    print_topology(topology)
    out = capsys.readouterr().out
    assert "plan v4" in out and "serving" in out
    assert out.index("studio") < out.index("laptop")
    assert "0-19 of 30" in out and "20-29 of 30" in out and "300 MiB" in out
    assert "100.0 ms per step" in out
