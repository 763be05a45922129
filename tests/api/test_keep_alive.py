"""`keep_alive` and the model listings in process, on a node without a cache
(the app's own ModelSet: the default model only). Loading cached models on
demand runs against a real node in tests/orchestration/test_on_demand.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exoquic.models.registry import DEFAULT_MODEL_ID

HELLO = [{"role": "user", "content": "Hello"}]


@pytest.mark.parametrize("keep_alive", ["5m", 0, -1, "1h30m", None])
async def test_a_valid_keep_alive_is_accepted_on_both_apis(
    tiny_app_factory: Any, keep_alive: object
) -> None:
    client = tiny_app_factory().test_client()
    body = {"model": DEFAULT_MODEL_ID, "messages": HELLO, "max_tokens": 1, "keep_alive": keep_alive}
    assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
    ollama = {**body, "stream": False}
    del ollama["max_tokens"]
    assert (await client.post("/api/chat", json=ollama)).status_code == 200


@pytest.mark.parametrize("keep_alive", ["forever", "5 minutes", True, [1]])
async def test_a_bad_keep_alive_is_a_400_naming_it(
    tiny_app_factory: Any, keep_alive: object
) -> None:
    client = tiny_app_factory().test_client()
    body = {"model": DEFAULT_MODEL_ID, "messages": HELLO, "keep_alive": keep_alive}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = json.loads(await response.get_data())["error"]
    assert error["param"] == "keep_alive" and "keep_alive" in error["message"]
    ollama = await client.post("/api/generate", json={"model": DEFAULT_MODEL_ID, **body})
    assert ollama.status_code == 400


async def test_the_default_model_stays_whatever_keep_alive_says(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    unload = await client.post("/api/generate", json={"model": DEFAULT_MODEL_ID, "keep_alive": 0})
    assert json.loads(await unload.get_data())["done_reason"] == "load"  # not unloaded
    (running,) = json.loads(await (await client.get("/api/ps")).get_data())["models"]
    assert running["expires_at"].startswith("2318") and running["default"] is True
    assert running["nodes"][0]["layers"] == [0, 1]
    card = json.loads(await (await client.get("/v1/models")).get_data())["data"][0]
    assert card["loaded"] is True and card["default"] is True and card["size_bytes"] > 0


async def test_without_a_cache_an_unknown_model_is_a_404(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    body = {"model": "nobody/nothing", "messages": HELLO}
    response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 404
    assert json.loads(await response.get_data())["error"]["code"] == "model_not_found"
