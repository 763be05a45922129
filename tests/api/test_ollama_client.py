"""The official `ollama` Python client against a real `exoquic up` node's `/api/*`."""

from __future__ import annotations

import httpx
import ollama
import pytest
from api_helpers import RunningNode

from exoquic.models.registry import DEFAULT_MODEL_ID

pytestmark = pytest.mark.slow

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0}


@pytest.fixture
def client(api_node: RunningNode) -> ollama.Client:
    return ollama.Client(host=api_node.url, headers=api_node.headers())


def test_chat_whole(client: ollama.Client, api_node: RunningNode) -> None:
    reply = client.chat(
        model=DEFAULT_MODEL_ID, messages=CAPITAL, options={**GREEDY, "num_predict": 16}
    )
    assert reply.done and reply.done_reason == "stop"
    assert reply.message.role == "assistant" and "Paris" in (reply.message.content or "")
    assert reply.model == DEFAULT_MODEL_ID and reply.created_at
    assert reply.prompt_eval_count and 0 < (reply.eval_count or 0) < 16
    durations = [reply.total_duration, reply.prompt_eval_duration, reply.eval_duration]
    assert all(d is not None and d > 0 for d in durations)
    assert (reply.prompt_eval_duration or 0) + (reply.eval_duration or 0) <= (
        reply.total_duration or 0
    )
    api_node.wait_idle(timeout=10)


def test_chat_stream_matches_whole_and_counts_tokens(client: ollama.Client) -> None:
    options = {**GREEDY, "num_predict": 4}
    whole = client.chat(model=f"{DEFAULT_MODEL_ID}:latest", messages=CAPITAL, options=options)
    parts = list(
        client.chat(model=DEFAULT_MODEL_ID, messages=CAPITAL, options=options, stream=True)
    )
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    last = parts[-1]
    assert last.done_reason == "length" and last.eval_count == 4
    assert last.prompt_eval_count == whole.prompt_eval_count


def test_logprobs_read_by_the_client(client: ollama.Client) -> None:
    options = {**GREEDY, "num_predict": 4}
    reply = client.chat(
        model=DEFAULT_MODEL_ID, messages=CAPITAL, options=options, logprobs=True, top_logprobs=3
    )
    logprobs = reply.logprobs or []
    assert len(logprobs) == reply.eval_count
    assert "".join(entry.token for entry in logprobs) == reply.message.content
    for entry in logprobs:  # greedy: the chosen token is the best alternative
        tops = entry.top_logprobs or []
        assert len(tops) == 3 and tops[0].logprob == entry.logprob <= 0
    streamed = list(
        client.generate(
            model=DEFAULT_MODEL_ID, prompt="1, 2, 3,", raw=True, options=options,
            logprobs=True, stream=True,
        )
    )  # fmt: skip
    entries = [entry for part in streamed for entry in part.logprobs or []]
    assert len(entries) == streamed[-1].eval_count == 4
    assert "".join(e.token for e in entries) == "".join(p.response or "" for p in streamed)


def test_generate_raw_stop_and_seed(client: ollama.Client) -> None:
    reply = client.generate(
        model=DEFAULT_MODEL_ID,
        prompt="1, 2, 3, 4,",
        raw=True,
        options={**GREEDY, "num_predict": 12, "stop": [" 7"]},
    )
    assert reply.response == " 5, 6," and reply.done_reason == "stop"
    seeded = {"temperature": 1.0, "seed": 7, "num_predict": 8}
    first = client.generate(model=DEFAULT_MODEL_ID, prompt="Tell me a story.", options=seeded)
    again = list(
        client.generate(
            model=DEFAULT_MODEL_ID, prompt="Tell me a story.", options=seeded, stream=True
        )
    )
    assert "".join(p.response or "" for p in again) == first.response
    loaded = client.generate(model=DEFAULT_MODEL_ID, prompt="")
    assert loaded.done and loaded.done_reason == "load"


def test_models_show_ps_version(client: ollama.Client, api_node: RunningNode) -> None:
    (listed,) = client.list().models
    assert listed.model == "smollm2:135m" and (listed.size or 0) > 10**6
    assert listed.details is not None and listed.details.parameter_size == "135M"
    (loaded,) = client.ps().models
    assert loaded.model == "smollm2:135m" and loaded.context_length
    by_listed_name = client.chat(model=loaded.model, messages=CAPITAL, options={"num_predict": 1})
    assert by_listed_name.model == "smollm2:135m" and by_listed_name.done
    shown = client.show(DEFAULT_MODEL_ID)
    assert "tools" in (shown.capabilities or [])
    assert shown.modelinfo and shown.modelinfo["general.architecture"] == "llama"
    assert shown.template and "<|im_start|>" in shown.template
    version = httpx.get(f"{api_node.url}/api/version", headers=api_node.headers(), timeout=10)
    assert version.json()["version"].count(".") == 2


def test_errors_in_ollamas_shape(client: ollama.Client, api_node: RunningNode) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="no-such-model", messages=CAPITAL)
    assert info.value.status_code == 404 and "no-such-model" in info.value.error
    keyless = ollama.Client(host=api_node.url)
    with pytest.raises(ollama.ResponseError) as info:
        keyless.list()
    assert info.value.status_code == 401 and "API key" in info.value.error


def test_tool_results_in_the_conversation(
    client: ollama.Client,
) -> None:
    """Ollama has no tool_choice: with tools the model may answer in text, and
    the tool's result message (`tool_name`) is accepted in the next turn."""
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    messages = [
        *CAPITAL,
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        ]},
        {"role": "tool", "content": "Sunny, 25 degrees", "tool_name": "get_weather"},
    ]  # fmt: skip
    reply = client.chat(
        model=DEFAULT_MODEL_ID,
        messages=messages,
        tools=[weather],
        options={**GREEDY, "num_predict": 20},
    )
    assert reply.done and "25" in (reply.message.content or "")
