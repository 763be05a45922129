"""A node preparing a hub model shows its download in `GET /v1/topology`.

One real node (ring of one, QUIC endpoint, manual discovery) fetches the tiny
repository, with SmolLM2's real tokenizer so that a node can start on it, from
the local hub; the hub holds one weight file back for a few seconds, so the
download is seen in the middle, then gone once the node serves.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from fixtures.hf_model import write_hf_tokenizer
from fixtures.hub_server import HubServer, build_tiny_repo

from exoquic.api.app import create_app
from exoquic.identity.keys import Identity
from exoquic.identity.trust import TrustStore
from exoquic.orchestration import plans as plans_module
from exoquic.orchestration.cluster import ClusterSettings
from exoquic.orchestration.node import NodeSettings, open_node

REPO = "exoquic-test/tiny-chat"
HELD = "model-00002-of-00003.safetensors"


@pytest.fixture(scope="module")
def chat_repo_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf_path: Path) -> Path:
    """The tiny repo with a tokenizer a node can load (the tiny one is a stub)."""
    directory = build_tiny_repo(tmp_path_factory.mktemp("tiny-chat"))
    write_hf_tokenizer(smollm2_gguf_path, directory)
    return directory


@pytest.fixture
def home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hub: HubServer, chat_repo_dir: Path
) -> Path:
    hub.add_repo(REPO, chat_repo_dir)
    monkeypatch.setenv("EXOQUIC_HF_CACHE", str(tmp_path / "cache"))
    (tmp_path / "peers.json").write_text(json.dumps({"peers": []}))
    return tmp_path


@asynccontextmanager
async def topology_of_a_hub_node(home: Path) -> AsyncIterator[Any]:
    """Start a node of the hub model alone; yield a `GET /v1/topology` function."""
    settings = ClusterSettings(
        identity=Identity.generate(), trust=TrustStore.open(home), name="solo",
        host="127.0.0.1", port=0, discovery=("manual",), peers_file=home / "peers.json",
        join_timeout=0.5, settle_time=0.05,
    )  # fmt: skip
    async with open_node(NodeSettings(REPO, engine="mlx"), settings) as node:
        client = create_app(node).test_client()

        async def topology() -> dict[str, Any]:
            response = await client.get("/v1/topology")
            assert response.status_code == 200
            body: dict[str, Any] = await response.get_json()
            return body

        yield topology


async def poll(topology: Any, until: Any, what: str, timeout: float = 20) -> dict[str, Any]:
    """Read the topology until `until(body)` holds; that body."""
    seen: list[dict[str, Any]] = []
    with trio.move_on_after(timeout):
        while not until(body := await topology()):
            seen.append(body)
            await trio.sleep(0.05)
        return body
    last = seen[-1]["downloads"] if seen else None
    raise AssertionError(f"timed out waiting for {what}; last downloads: {last}")


def only_the_held_file_missing(body: dict[str, Any]) -> bool:
    return any(
        d["phase"] == "downloading" and d["files_done"] == d["files_total"] - 1
        for d in body["downloads"]
    )


async def test_a_downloading_node_shows_its_progress_then_serves(
    hub: HubServer, home: Path, chat_repo_dir: Path
) -> None:
    held_size = (chat_repo_dir / HELD).stat().st_size
    hub.cut_after(HELD, 50_000)  # a first part arrives...
    hub.fail(HELD, 503, times=3)  # ...then the hub is busy for 0.5 + 1 + 1.5 s
    async with topology_of_a_hub_node(home) as topology:
        body = await poll(topology, only_the_held_file_missing, "the download in the middle")
        [download] = body["downloads"]
        assert download["self"] and download["node"] == "solo" and download["model"] == REPO
        assert 0 < download["total"] - download["done"] <= held_size - 50_000
        assert download["files_total"] == 8  # 3 weight files, config, index, 3 tokenizer files
        assert download["error"] is None
        assert body["status"] == "loading"
        body = await poll(topology, lambda b: b["status"] == "serving", "the node to serve")
        assert body["downloads"] == []


async def test_a_failed_download_shows_its_error_and_is_retried(
    hub: HubServer, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plans_module, "LOAD_RETRY_DELAY", 1.0)
    hub.fail(HELD, 404)  # not a transient error: the download gives up at once
    async with topology_of_a_hub_node(home) as topology:
        body = await poll(
            topology,
            lambda b: any(d["phase"] == "failed" for d in b["downloads"]),
            "the failure",
        )
        [download] = body["downloads"]
        assert HELD in download["error"] and "404" in download["error"]
        body = await poll(topology, lambda b: b["status"] == "serving", "the retry to serve")
        assert body["downloads"] == []
