"""Preparation progress travels between real in-process nodes (QUIC on loopback).

A node whose shard loader is held in the middle of a "download" shows up in
its peers' `downloads` (the `/v1/topology` view), also on a peer that links
to it later; it leaves the list once ready, or when its link goes. A failed
load shows its error everywhere and is tried again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from test_cluster import CONFIG, MODEL_ID, Lab, load_shard, wait_plan

from exoquic.download.progress import current_reporter
from exoquic.models.shard import Shard
from exoquic.models.weights import ShardWeights
from exoquic.orchestration import plans as plans_module
from exoquic.orchestration.cluster import Cluster
from exoquic.orchestration.plans import ShardLoader
from exoquic.orchestration.topology_view import topology_report

WEIGHTS = "model-00001-of-00002.safetensors"


def held_download(release: threading.Event) -> ShardLoader:
    """A loader that reports 400 of 1000 bytes, then waits for `release` (a worker thread)."""

    def load(shard: Shard) -> ShardWeights:
        report = current_reporter()  # set by the cluster around its loader
        assert report is not None
        report(WEIGHTS, 0, 1000)
        report("config.json", 10, 10)
        report(WEIGHTS, 400, 1000)
        release.wait(timeout=30)
        report(WEIGHTS, 1000, 1000)
        return load_shard(shard)

    return load


def downloads(cluster: Cluster) -> list[dict[str, Any]]:
    return topology_report(cluster, MODEL_ID, CONFIG.num_layers)["downloads"]


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out waiting for {what}")


def shows(cluster: Cluster, node: str, **expected: Any) -> bool:
    entries = [d for d in downloads(cluster) if d["node"] == node]
    return len(entries) == 1 and all(entries[0][k] == v for k, v in expected.items())


async def test_a_download_in_progress_shows_on_every_peer_until_ready(tmp_path: Path) -> None:
    lab = Lab(tmp_path, ["a", "b", "c"])
    release = threading.Event()
    held = {"phase": "downloading", "done": 410, "total": 1010, "files_done": 1, "files_total": 2}
    try:
        async with lab.node("a") as a, lab.node("b", loader=held_download(release)) as b:
            await wait_until(lambda: shows(a, "b", **held), "a to see b downloading")
            [entry] = downloads(a)
            assert entry | {"bytes_per_second": 0} == {
                "node_id": b.node_id, "node": "b", "self": False, "model": MODEL_ID,
                **held, "bytes_per_second": 0, "error": None,
            }  # fmt: skip
            assert shows(b, "b", self=True, **held)  # and b itself, before any message

            # The stalled download's rate drops to 0 after a second or two; from then on
            # b's state stands still and c can only learn it when its link forms.
            def rate() -> int:
                return int(downloads(a)[0]["bytes_per_second"])

            await wait_until(lambda: rate() > 0, "a rate over the first second")
            await wait_until(lambda: rate() == 0, "the rate of the stalled download")
            async with lab.node("c") as c:
                await wait_until(lambda: shows(c, "b", **held), "c to see b downloading")
                release.set()
                await wait_plan([a, b, c], 3)
                await wait_until(
                    lambda: not downloads(a) and not downloads(c), "b's ready to reach a and c"
                )
                assert b.preparation_states()[b.node_id].phase == "ready"
            # c is gone: its last state goes with its link
            progress = a.plan_loop.peer_progress
            await wait_until(lambda: c.node_id not in progress, "a to forget c")
            assert set(progress) == {b.node_id}
    finally:
        release.set()


async def test_a_failed_load_shows_its_error_then_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plans_module, "LOAD_RETRY_DELAY", 1.0)
    lab = Lab(tmp_path, ["a", "b"])
    attempts = []

    def flaky(shard: Shard) -> ShardWeights:
        attempts.append(shard)
        if len(attempts) == 1:
            raise OSError("cannot reach the hub at http://hub.invalid")
        return load_shard(shard)

    async with lab.node("a") as a, lab.node("b", loader=flaky) as b:
        await wait_until(
            lambda: shows(
                a, "b", phase="failed", error="cannot reach the hub at http://hub.invalid"
            ),
            "a to see b's failure",
        )
        await wait_plan([a, b], 2)  # b survived and loaded on its second try
        await wait_until(lambda: not downloads(a), "b's ready to reach a")
        assert len(attempts) >= 2
