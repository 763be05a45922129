"""A conversation the model's chat template refuses is the client's error: an OpenAI 400."""

from __future__ import annotations

from typing import Any

import pytest
from api_helpers import error_of

from exoquic.models.registry import DEFAULT_MODEL_ID
from exoquic.orchestration.node import Node

# Gemma 2's rule, as its template writes it.
NO_SYSTEM_ROLE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}"
)


async def test_a_refused_system_message_is_a_400(
    tiny_node: Node, tiny_app_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiny_node.tokenizer, "chat_template", NO_SYSTEM_ROLE)
    client = tiny_app_factory().test_client()
    user = {"role": "user", "content": "Hi"}
    body = {"model": DEFAULT_MODEL_ID, "max_tokens": 1}
    response = await client.post(
        "/v1/chat/completions",
        json={**body, "messages": [{"role": "system", "content": "Be brief."}, user]},
    )
    assert response.status_code == 400
    error = error_of(await response.get_data())
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error",
        "messages",
        "invalid_messages",
    )
    assert "System role not supported" in error["message"]
    # Without the system message the same template serves the request.
    response = await client.post("/v1/chat/completions", json={**body, "messages": [user]})
    assert response.status_code == 200
