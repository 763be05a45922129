"""Cached models served on demand by a real `exoquic up`, over real HTTP.

One node with the bundled SmolLM2 as its default model and a hub cache (in a
temporary EXOQUIC_HF_CACHE) holding a tiny generated GGUF and the header of an
8B model: requests alternate between the two small models by name without a
restart, the tiny one's first request loads it, `keep_alive: 0` unloads it,
an uncached name gets a 404 naming `exoquic pull`, and the 8B one a 503 with
the fit check's message.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fixtures.hub_server import run_hub_server
from on_demand_models import (
    BROKEN_ID,
    HUGE_ID,
    MID_ID,
    TINY_FILE,
    TINY_ID,
    TINY_REPO,
    cache_broken,
    cache_huge,
    cache_mid,
    cache_tiny,
    gen_gguf,
)
from ring_nodes import RingNode, engine_under_test, make_nodes, running, wait_serving

from exoquic.models.gguf_file import GGUFFile
from exoquic.models.registry import DEFAULT_MODEL_ID

pytestmark = pytest.mark.slow

TIMEOUT = 300.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RingNode]:
    cache = tmp_path_factory.mktemp("hub-cache")
    work = tmp_path_factory.mktemp("work")
    cache_tiny(cache, work)
    cache_mid(cache, work)
    cache_huge(cache)
    cache_broken(cache, work)
    root = tmp_path_factory.mktemp("on-demand")
    extra = ("--memory-limit", "3G", "--keep-alive", "5m")
    (solo,) = make_nodes(root, ["solo"], [engine_under_test()], extra)
    solo.env = {"EXOQUIC_HF_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    with running([solo]):
        wait_serving([solo], 1)
        yield solo


def chat(node: RingNode, model: str, **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4,
            "temperature": 0, **extra}  # fmt: skip
    return httpx.post(f"{node.url}/v1/chat/completions", json=body, timeout=TIMEOUT)


def first_token_seconds(node: RingNode, model: str) -> float:
    """From sending a streamed chat request to its first content token."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2,
            "temperature": 0, "stream": True}  # fmt: skip
    started = time.perf_counter()
    with httpx.stream(
        "POST", f"{node.url}/v1/chat/completions", json=body, timeout=TIMEOUT
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if (
                line.startswith("data: {")
                and '"content": "' in line
                and '"content": ""' not in line
            ):
                return time.perf_counter() - started
    raise AssertionError("no token came")


def loaded(node: RingNode) -> dict[str, dict[str, Any]]:
    response = httpx.get(f"{node.url}/api/ps", timeout=10)
    response.raise_for_status()
    return {m["model"]: m for m in response.json()["models"]}


def wait_unloaded(node: RingNode, model: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while model in loaded(node):
        assert time.monotonic() < deadline, f"{model} still loaded:\n{node.log()[-3000:]}"
        time.sleep(0.2)


def wait_holders(
    node: RingNode, model: str, names: set[str], timeout: float = 60.0
) -> list[dict[str, Any]]:
    """The nodes holding `model`'s layers, once they are `names` (a slow join
    may come after the first plan, which the ring then replaces)."""
    deadline = time.monotonic() + timeout
    while True:
        holders: list[dict[str, Any]] = loaded(node)[model]["nodes"]
        if {h["name"] for h in holders} == names:
            return holders
        assert time.monotonic() < deadline, f"{model} held by {holders}:\n{node.log()[-3000:]}"
        time.sleep(0.2)


def rss(node: RingNode) -> int:
    return int(httpx.get(f"{node.url}/health", timeout=10).json()["rss_bytes"])


def loads_logged(node: RingNode) -> int:
    return node.log().count(f"loaded {TINY_ID} on demand")


def test_two_models_alternate_by_name_and_keep_alive_zero_unloads(node: RingNode) -> None:
    assert chat(node, "smollm2:135m").status_code == 200
    assert list(loaded(node)) == ["smollm2:135m"]

    switch = first_token_seconds(node, f"{TINY_REPO}:Q8_0")  # its first request loads it
    tiny = loaded(node)[TINY_ID]
    cold_load = tiny["load_seconds"]
    print(f"switch to {TINY_ID}: first token {switch:.2f} s, its load {cold_load:.2f} s")
    assert switch <= cold_load + 1.0  # the target
    assert tiny["nodes"][0]["layers"] == [0, 3] and not tiny["default"]

    for _ in range(2):  # alternate by name, without a restart or another load
        for model, model_id in (("smollm2:135m", DEFAULT_MODEL_ID), (TINY_ID, TINY_ID)):
            response = chat(node, model)
            assert response.status_code == 200, response.text
            assert response.json()["model"] == model_id
    assert loads_logged(node) == 1

    ps = loaded(node)
    assert ps["smollm2:135m"]["expires_at"].startswith("2318")  # the default stays
    expires = datetime.fromisoformat(ps[TINY_ID]["expires_at"].replace("Z", "+00:00"))
    assert 250 < expires.timestamp() - time.time() <= 301  # the 5m keep-alive

    body = {"model": TINY_ID, "keep_alive": 0}
    unload = httpx.post(f"{node.url}/api/generate", json=body, timeout=TIMEOUT)
    assert unload.json()["done_reason"] == "unload"
    wait_unloaded(node, TINY_ID)
    health = httpx.get(f"{node.url}/health", timeout=10).json()
    assert health["loaded_models"] == [DEFAULT_MODEL_ID]

    # Loaded again on its next request; keep_alive 0 there unloads it once it is answered.
    response = chat(node, TINY_ID, keep_alive=0)
    assert response.status_code == 200, response.text
    assert loads_logged(node) == 2
    wait_unloaded(node, TINY_ID)


def test_unloading_gives_the_memory_back(node: RingNode) -> None:
    base = rss(node)
    load = httpx.post(f"{node.url}/api/generate", json={"model": MID_ID}, timeout=TIMEOUT)
    assert load.json()["done_reason"] == "load"
    with_mid = rss(node)
    unload = {"model": MID_ID, "keep_alive": 0}
    httpx.post(f"{node.url}/api/generate", json=unload, timeout=TIMEOUT)
    wait_unloaded(node, MID_ID)
    after = rss(node)
    print(f"RSS {base / 2**20:.0f} MiB, {with_mid / 2**20:.0f} MiB with {MID_ID} loaded, "
          f"{after / 2**20:.0f} MiB once unloaded")  # fmt: skip
    assert with_mid - base > 100 * 2**20
    assert after - base < (with_mid - base) / 2


def test_an_idle_model_is_unloaded_after_its_keep_alive(node: RingNode) -> None:
    assert chat(node, TINY_ID, keep_alive="2s").status_code == 200
    ended = time.monotonic()
    assert TINY_ID in loaded(node)  # kept for its 2 s
    wait_unloaded(node, TINY_ID, timeout=10)
    assert time.monotonic() - ended >= 1.5


def test_exoquic_ps_shows_models_layers_and_expiry(node: RingNode) -> None:
    assert chat(node, TINY_ID, keep_alive="10m").status_code == 200
    exoquic = Path(sys.executable).with_name("exoquic")
    env = {"EXOQUIC_HOME": str(node.home), "COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [str(exoquic), "ps"], env=env, capture_output=True, text=True, timeout=60, check=True
    ).stdout
    print(out)
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in out.splitlines()]
    lines = {cells[0].removesuffix(" (default)"): " ".join(cells) for cells in rows if cells}
    assert "(default)" in lines["smollm2:135m"] and "never" in lines["smollm2:135m"]
    assert "solo 0-29" in lines["smollm2:135m"]
    assert "solo 0-3" in lines[TINY_ID]
    assert "in 9m" in lines[TINY_ID] or "in 10m" in lines[TINY_ID]
    raw = subprocess.run(
        [str(exoquic), "ps", "--json"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert {m["model"] for m in json.loads(raw)["models"]} == {"smollm2:135m", TINY_ID}


def test_models_lists_cached_and_loaded_with_fit(node: RingNode) -> None:
    data = httpx.get(f"{node.url}/v1/models", timeout=60).json()["data"]
    cards = {c["id"]: c for c in data}
    assert data[0]["id"] == DEFAULT_MODEL_ID and data[0]["loaded"] and data[0]["default"]
    assert {TINY_ID, HUGE_ID} <= set(cards)
    assert cards[HUGE_ID]["loaded"] is False and cards[HUGE_ID]["fits"] is False
    assert cards[HUGE_ID]["size_bytes"] > 4_500_000_000
    assert cards[TINY_ID]["fits"] is True and cards[TINY_ID]["size_bytes"] > 0
    one = httpx.get(f"{node.url}/v1/models/{HUGE_ID}", timeout=60).json()
    assert one["id"] == HUGE_ID and one["fits"] is False and one["loaded"] is False
    missing = httpx.get(f"{node.url}/v1/models/nobody/nothing-GGUF", timeout=60)
    assert missing.status_code == 404 and "exoquic pull" in missing.json()["error"]["message"]
    tags = httpx.get(f"{node.url}/api/tags", timeout=60).json()["models"]
    assert {"smollm2:135m", TINY_ID, HUGE_ID} <= {t["name"] for t in tags}


def test_concurrent_first_requests_share_one_load(node: RingNode) -> None:
    unload = {"model": TINY_ID, "keep_alive": 0}  # loaded (10m) by the tests before, maybe
    httpx.post(f"{node.url}/api/generate", json=unload, timeout=TIMEOUT)
    wait_unloaded(node, TINY_ID)
    before = loads_logged(node)
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: chat(node, TINY_ID, keep_alive=0), range(3)))
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert loads_logged(node) == before + 1
    wait_unloaded(node, TINY_ID)


def test_a_broken_file_in_the_cache_gets_a_503_and_the_node_goes_on(node: RingNode) -> None:
    response = chat(node, BROKEN_ID)
    assert response.status_code == 503
    assert f"cannot load {BROKEN_ID}" in response.json()["error"]["message"]
    card = httpx.get(f"{node.url}/v1/models/{BROKEN_ID}", timeout=60).json()
    assert card["loaded"] is False and card["size_bytes"] is None
    assert chat(node, DEFAULT_MODEL_ID).status_code == 200


def test_an_uncached_model_gets_a_404_naming_exoquic_pull(node: RingNode) -> None:
    name = "nobody/nothing-GGUF:Q4_K_M"
    response = chat(node, name)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["code"] == "model_not_found"
    assert f"exoquic pull {name}" in error["message"]
    ollama = httpx.post(
        f"{node.url}/api/chat",
        json={"model": name, "messages": [{"role": "user", "content": "Hi"}], "stream": False},
        timeout=60,
    )
    assert ollama.status_code == 404 and "exoquic pull" in ollama.json()["error"]


def test_a_model_too_big_gets_a_503_with_the_fit_message(node: RingNode) -> None:
    response = chat(node, HUGE_ID)
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert f"{HUGE_ID} does not fit: needs" in message
    assert "this device offers" in message and "add a device" in message
    assert HUGE_ID not in loaded(node)


def test_auto_pull_fetches_an_uncached_model_first(tmp_path: Path) -> None:
    """With --auto-pull, a request for a model only the hub has pulls it, then loads it."""
    repo_dir = tmp_path / "repo"
    repo_dir.mkdir()
    gen = gen_gguf()
    gen.generate(gen.SHAPES["tiny"], "q8_0", repo_dir / TINY_FILE)
    with run_hub_server() as hub:
        hub.add_repo(TINY_REPO, repo_dir)
        extra = ("--auto-pull", "--memory-limit", "3G")
        (solo,) = make_nodes(tmp_path / "homes", ["puller"], [engine_under_test()], extra)
        solo.env = {"EXOQUIC_HF_CACHE": str(tmp_path / "cache"), "HF_ENDPOINT": hub.endpoint,
                    "HF_HUB_OFFLINE": "0"}  # fmt: skip
        with running([solo]):
            wait_serving([solo], 1)
            response = chat(solo, f"{TINY_REPO}:Q8_0")
            assert response.status_code == 200, f"{response.text}\n{solo.log()[-3000:]}"
            assert TINY_ID in loaded(solo)
            fetched = [r for r in hub.log if r.filename == TINY_FILE and r.body_bytes > 0]
            assert fetched, "the node did not fetch the file from the hub"
            missing = chat(solo, "test-org/absent-GGUF:Q8_0")
            assert (
                missing.status_code == 404 and "cannot pull" in missing.json()["error"]["message"]
            )


def test_the_least_recently_used_idle_model_makes_room(node: RingNode, tmp_path: Path) -> None:
    """A node that holds its default model and one of the two others, not both:
    loading the second unloads the first (idle) one."""
    cards = {c["id"]: c for c in httpx.get(f"{node.url}/v1/models", timeout=60).json()["data"]}
    default, tiny, mid = (cards[m]["needed_bytes"] for m in (DEFAULT_MODEL_ID, TINY_ID, MID_ID))
    assert tiny < mid
    # Room for the default and mid with half of tiny to spare: not for all three.
    limit = int((default + mid + tiny // 2) / 0.8)
    cache = tmp_path / "cache"
    cache_tiny(cache, tmp_path)
    cache_mid(cache, tmp_path)
    (small,) = make_nodes(tmp_path / "homes", ["small"], [engine_under_test()],
                          ("--memory-limit", str(limit)))  # fmt: skip
    small.env = {"EXOQUIC_HF_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    with running([small]):
        wait_serving([small], 1)
        for model in (TINY_ID, MID_ID):
            load = httpx.post(f"{small.url}/api/generate", json={"model": model}, timeout=TIMEOUT)
            assert load.status_code == 200, load.text
        assert set(loaded(small)) == {"smollm2:135m", MID_ID}
        log = " ".join(small.log().split())
        assert f"unloading {TINY_ID} (least recently used) to make room for {MID_ID}" in log


@contextmanager
def ring_with_tiny_cached(tmp_path: Path, names: list[str]) -> Iterator[Sequence[RingNode]]:
    """A running ring of `names`, each node with the tiny model in its cache."""
    cache = tmp_path / "cache"
    cache_tiny(cache, tmp_path)
    nodes = make_nodes(tmp_path / "homes", names, [engine_under_test()] * len(names))
    for ring_node in nodes:
        ring_node.env = {"EXOQUIC_HF_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    with running(nodes):
        wait_serving(nodes, len(nodes))
        yield nodes


def test_in_a_ring_a_model_loaded_on_demand_is_spread_and_unloaded_together(
    tmp_path: Path,
) -> None:
    """Two nodes with the tiny model cached: the first request for it, on b,
    loads it over both (a joins for its peer); a answers the same through that
    ring; when b's request says keep_alive 0 and a never used it, both unload."""
    with ring_with_tiny_cached(tmp_path, ["ring-a", "ring-b"]) as (a, b):
        holders = loaded(a)["smollm2:135m"]["nodes"]
        assert {h["name"] for h in holders} == {"ring-a", "ring-b"}
        layers = sorted(tuple(h["layers"]) for h in holders)
        assert layers[0][0] == 0 and layers[-1][1] == 29 and layers[0][1] + 1 == layers[1][0]

        started = time.perf_counter()
        first = chat(b, TINY_ID)
        seconds = time.perf_counter() - started
        assert first.status_code == 200, first.text
        report = loaded(b)[TINY_ID]
        print(f"ring of 2: first request {seconds:.2f} s, its load {report['load_seconds']:.2f} s")
        holders = wait_holders(b, TINY_ID, {"ring-a", "ring-b"})
        layers = sorted(tuple(h["layers"]) for h in holders)
        assert layers[0][0] == 0 and layers[0][1] + 1 == layers[1][0]
        assert loaded(a)[TINY_ID]["kept_for_peers"] is True  # a holds its layers for b
        assert loaded(b)[TINY_ID]["kept_for_peers"] is False
        assert "joined its ring for a peer" in " ".join(a.log().split())

        again = chat(b, TINY_ID, keep_alive=0)
        assert again.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]
        wait_unloaded(b, TINY_ID)
        wait_unloaded(a, TINY_ID)  # nobody wants it any more: a lets go too
        assert chat(a, "smollm2:135m").status_code == 200  # the default ring serves on


def test_a_follower_that_gets_a_request_keeps_the_model_for_itself(tmp_path: Path) -> None:
    """A node that joined a ring for its peer and then serves a request of its
    own keeps the model after the peer lets go (its own keep-alive), and the
    peer keeps its layers for it (the ring stays whole)."""
    with ring_with_tiny_cached(tmp_path, ["keep-a", "keep-b"]) as (a, b):
        assert chat(b, TINY_ID).status_code == 200
        wait_holders(b, TINY_ID, {"keep-a", "keep-b"})
        from_a = chat(a, TINY_ID)  # a, a follower so far, now wants it too
        assert from_a.status_code == 200, from_a.text
        assert chat(b, TINY_ID, keep_alive=0).status_code == 200  # b no longer wants it
        time.sleep(3)
        for ring_node in (a, b):  # a wants it, so b keeps its layers for a
            wait_holders(ring_node, TINY_ID, {"keep-a", "keep-b"}, timeout=0.5)
        assert (
            chat(a, TINY_ID).json()["choices"][0]["message"]
            == (from_a.json()["choices"][0]["message"])
        )


def test_with_auto_pull_a_cluster_fetches_each_node_only_its_layers(tmp_path: Path) -> None:
    """Two nodes with empty caches and --auto-pull: a request on a for a hub
    GGUF spreads it over both, each fetching from the hub only the header and
    the byte ranges of the layers the plan gives it."""
    repo_dir = tmp_path / "repo"
    repo_dir.mkdir()
    gen = gen_gguf()
    gen.generate(replace(gen.SHAPES["tiny"], context=512), "q8_0", repo_dir / TINY_FILE)
    with run_hub_server() as hub:
        hub.add_repo(TINY_REPO, repo_dir)
        nodes = make_nodes(tmp_path / "homes", ["first", "second"], [engine_under_test()] * 2,
                           ("--auto-pull",))  # fmt: skip
        for ring_node in nodes:
            ring_node.env = {"EXOQUIC_HF_CACHE": str(tmp_path / ring_node.name),
                             "HF_ENDPOINT": hub.endpoint, "HF_HUB_OFFLINE": "0"}  # fmt: skip
        a, b = nodes
        with running(nodes):
            wait_serving(nodes, 2)
            response = chat(a, f"{TINY_REPO}:Q8_0")
            assert response.status_code == 200, f"{response.text}\n{a.log()[-3000:]}"
            holders = wait_holders(b, TINY_ID, {"first", "second"})
            again = chat(a, f"{TINY_REPO}:Q8_0")
            assert again.json()["choices"][0]["message"] == response.json()["choices"][0]["message"]
            fetched = hub.bytes_served(TINY_FILE)
            header = GGUFFile.open(repo_dir / TINY_FILE)
            size, embedding = header.size, header.tensors["token_embd.weight"].nbytes
            print(f"layers {[h['layers'] for h in holders]}: fetched {fetched} of {size} bytes")
            # All tensor data once, but the tied embedding twice (the first
            # shard's input, the last one's head); each node's header twice (to
            # start, and in its shard's file). A whole copy on either node would
            # add the other node's layers again.
            assert 0 < fetched <= size + embedding + 3 * header.data_start
