"""`POST /api/pull` in process (the real app) against the local hub of the download
tests: Ollama's NDJSON progress, one download per model, the file in the cache."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import pytest
import trio
from fixtures.hub_server import HubServer, run_hub_server

from exoquic.api.security import ApiSecurity
from exoquic.download.gguf import cached_gguf
from exoquic.models.registry import DEFAULT_MODEL_ID, get_model

MODEL = get_model("smollm2:360m")
REPO, FILE = str(MODEL.gguf_repo), str(MODEL.gguf_file)
SIZE = 3 * 1024 * 1024
RATE = 6 * 1024 * 1024  # bytes a second: half a second of progress to watch


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A local hub serving the registry's GGUF repository of `MODEL` (random bytes:
    a pull fetches and verifies the file, it does not parse it), an empty cache."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / FILE).write_bytes(os.urandom(SIZE))
    with run_hub_server() as server:
        server.add_repo(REPO, repo)
        server.rate = RATE
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("EXOQUIC_HF_CACHE", str(tmp_path / "cache"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        yield server


def listings(hub: HubServer) -> list[str]:
    """The repository listings asked of the hub: one per download started."""
    return [r.path for r in hub.requests(server="hub") if r.path.startswith("/api/models/")]


async def bytes_served(hub: HubServer) -> int:
    """The file's bytes the hub sent, once it has logged a whole file's worth (it
    logs a request when its answer is sent, a moment after the client read it)."""
    with trio.move_on_after(10):
        while hub.bytes_served(FILE) < SIZE:
            await trio.sleep(0.05)
    return hub.bytes_served(FILE)


def lines_of(raw: bytes) -> list[dict[str, Any]]:
    text = raw.decode()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


async def test_pull_streams_progress_and_caches_the_file(
    tiny_app_factory: Any, hub: HubServer
) -> None:
    client = tiny_app_factory().test_client()
    response = await client.post("/api/pull", json={"model": "smollm2:360m"})
    assert response.status_code == 200
    assert response.content_type == "application/x-ndjson"
    lines = lines_of(await response.get_data())
    assert lines[0] == {"status": "pulling manifest"}
    assert lines[-1] == {"status": "success"}
    progress = lines[1:-1]
    assert len(progress) >= 2, progress  # the counts moved while the file arrived
    assert {line["digest"] for line in progress} == {FILE}
    assert all(line["status"] == f"pulling {FILE}" and line["total"] == SIZE for line in progress)
    completed = [line["completed"] for line in progress]
    assert completed == sorted(completed) and completed[-1] == SIZE
    assert await bytes_served(hub) == SIZE
    path = cached_gguf(REPO, FILE)
    assert path.read_bytes() == (hub.repos[REPO].files[FILE].path).read_bytes()


async def test_two_pulls_of_one_model_share_one_download(
    tiny_app_factory: Any, hub: HubServer
) -> None:
    client = tiny_app_factory().test_client()
    bodies: list[bytes] = []

    async def pull(name: str) -> None:
        response = await client.post("/api/pull", json={"model": name})
        bodies.append(await response.get_data())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pull, "smollm2:360m")
        nursery.start_soon(pull, MODEL.id)  # another name of the same model
    assert [lines_of(b)[-1] for b in bodies] == [{"status": "success"}] * 2
    assert len(listings(hub)) == 1  # one download: the second request followed the first
    assert await bytes_served(hub) == SIZE
    # Once cached, a pull succeeds at once without fetching it again.
    again = await client.post("/api/pull", json={"model": "smollm2:360m", "stream": False})
    assert await again.get_json() == {"status": "success"}
    assert len(listings(hub)) == 2 and await bytes_served(hub) == SIZE


async def test_pull_failures_are_ollama_shaped(tiny_app_factory: Any, hub: HubServer) -> None:
    client = tiny_app_factory().test_client()
    unknown = await client.post("/api/pull", json={"model": "no such model"})
    assert unknown.status_code == 400
    assert "unknown model" in (await unknown.get_json())["error"]
    missing = await client.post("/api/pull", json={"model": "someone/absent-GGUF/x.gguf"})
    assert missing.status_code == 200  # the stream had begun: the error is its last line
    last = lines_of(await missing.get_data())[-1]
    assert "absent-GGUF" in last["error"]
    whole = {"model": "someone/absent-GGUF/x.gguf", "stream": False}
    refused = await client.post("/api/pull", json=whole)
    assert refused.status_code == 500 and "absent-GGUF" in (await refused.get_json())["error"]
    keyed = tiny_app_factory(ApiSecurity(api_key="k")).test_client()
    assert (await keyed.post("/api/pull", json={"model": "smollm2:360m"})).status_code == 401
    assert hub.bytes_served(FILE) == 0


async def test_a_bundled_model_needs_no_download(tiny_app_factory: Any, hub: HubServer) -> None:
    client = tiny_app_factory().test_client()
    response = await client.post("/api/pull", json={"model": "smollm2:135m"})
    lines = lines_of(await response.get_data())
    assert lines[-1] == {"status": "success"}
    assert "ships with exoquic" in lines[-2]["status"]
    assert hub.requests() == []


async def test_serving_goes_on_while_a_pull_runs(tiny_app_factory: Any, hub: HubServer) -> None:
    hub.rate = SIZE / 3  # a three-second download
    client = tiny_app_factory().test_client()
    done = trio.Event()

    async def pull() -> None:
        await client.post("/api/pull", json={"model": "smollm2:360m", "stream": False})
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pull)
        await trio.sleep(0.5)
        started = trio.current_time()
        catalog = await (await client.get("/v1/exoquic/models")).get_json()
        body = {"model": DEFAULT_MODEL_ID, "prompt": "Hi", "max_tokens": 2}
        completion = await client.post("/v1/completions", json=body)
        elapsed = trio.current_time() - started
        assert not done.is_set(), "the pull ended before the requests were made"
        assert completion.status_code == 200 and elapsed < 1.5
        row = next(r for r in catalog["data"] if r["id"] == MODEL.id)
        assert row["pulling"] is True and row["cached"] is False
    assert done.is_set()
