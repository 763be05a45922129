"""The official `openai` client against a real `exoquic up` node.

Greedy sampling and small token budgets keep each request to a few seconds;
the node is shared by the whole session (conftest `api_node`).
"""

from __future__ import annotations

import httpx
import openai
import pytest
from api_helpers import RunningNode
from openai import OpenAI

from exoquic.models.registry import DEFAULT_MODEL_ID

pytestmark = pytest.mark.slow

MODEL = DEFAULT_MODEL_ID
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(api_node: RunningNode) -> OpenAI:
    return OpenAI(base_url=f"{api_node.url}/v1", api_key=api_node.api_key, max_retries=0)


def test_chat_greedy_answer(client: OpenAI, api_node: RunningNode) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=CAPITAL,
        temperature=0,
        max_tokens=16,  # type: ignore[arg-type]
    )
    choice = reply.choices[0]
    assert "Paris" in (choice.message.content or "")
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert reply.model == MODEL and reply.object == "chat.completion"
    assert reply.usage is not None
    assert 0 < reply.usage.completion_tokens < 16
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    api_node.wait_idle(timeout=10)


def test_chat_stream_with_usage_stops_at_max_completion_tokens(client: OpenAI) -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name three colors."},
    ]
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        temperature=0,
        max_completion_tokens=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and not any(finishes[:-1])
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens == 3
    assert text.strip()


def test_completion_and_stop_strings(client: OpenAI) -> None:
    capital = client.completions.create(
        model=MODEL, prompt="The capital of France is", temperature=0, max_tokens=2
    )
    assert capital.choices[0].text.startswith(" Paris")
    assert capital.choices[0].finish_reason == "length"
    assert capital.usage is not None and capital.usage.completion_tokens == 2
    counted = client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4,", temperature=0, max_tokens=12, stop=[" 7", "x"]
    )
    assert counted.choices[0].text == " 5, 6,"
    assert counted.choices[0].finish_reason == "stop"
    single = client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4,", temperature=0, max_tokens=12, stop=" 6"
    )
    assert single.choices[0].text == " 5,"


def test_completion_stream(client: OpenAI) -> None:
    stream = client.completions.create(
        model=MODEL, prompt="1, 2, 3, 4,", temperature=0, max_tokens=5, stream=True
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == " 5, 6"
    assert chunks[-1].choices[0].finish_reason == "length"


def test_seeded_sampling_repeats(client: OpenAI) -> None:
    def sample(seed: int) -> str:
        reply = client.completions.create(
            model=MODEL, prompt="Once upon a time", temperature=1.2, seed=seed, max_tokens=6
        )
        return reply.choices[0].text

    assert sample(7) == sample(7)


def test_models(client: OpenAI) -> None:
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


@pytest.mark.parametrize(
    "extra",
    [
        {"temperature": 3},
        {"top_p": 0},
        {"n": 9},
        {"presence_penalty": 2.5},
        {"logit_bias": {"99999999": 1}},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": []}}},
        {"max_tokens": 0},
        {"stop": ["a", "b", "c", "d", "e"]},
        {  # a forced call to a function the request does not offer
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        {"max_tokens": 4096},  # prompt + 4096 exceed the 2048-token context
    ],
)
def test_bad_parameters_raise_bad_request(client: OpenAI, extra: dict[str, object]) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=CAPITAL, **extra)  # type: ignore[call-overload]
    assert info.value.status_code == 400
    assert info.value.body["message"]  # type: ignore[index]


def test_context_overflow_is_bad_request(client: OpenAI) -> None:
    long_prompt = " hello" * 2100
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": long_prompt}]
        )
    assert info.value.code == "context_length_exceeded"


def test_unknown_model_is_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=CAPITAL)  # type: ignore[arg-type]
    assert info.value.code == "model_not_found"


def test_wrong_or_missing_key_is_authentication_error(api_node: RunningNode) -> None:
    client = OpenAI(base_url=f"{api_node.url}/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.models.list()
    assert info.value.code == "invalid_api_key"
    # The SDK always sends some key; a bare HTTP client may send none.
    missing = httpx.get(f"{api_node.url}/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"


def test_chat_logprobs_read_by_the_sdk(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=CAPITAL,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=8,  # type: ignore[arg-type]
        logprobs=True,
        top_logprobs=2,
    )
    choice = reply.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    assert bytes(b for entry in content for b in entry.bytes or []).decode() == (
        choice.message.content
    )
    for entry in content:  # greedy: each token is its position's best
        assert len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob == entry.logprob <= 0
        assert entry.top_logprobs[0].token == entry.token


def test_text_echo_logprobs_stream_with_the_sdk(client: OpenAI) -> None:
    prompt = "The capital of France is"
    stream = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=3, temperature=0, echo=True, logprobs=1, stream=True
    )
    chunks = [c.choices[0] for c in stream if c.choices]
    assert chunks[0].text.startswith(prompt)
    scored = [c.logprobs for c in chunks if c.logprobs]
    values = [v for lp in scored for v in lp.token_logprobs or []]
    assert values[0] is None and all(v is not None and v <= 0 for v in values[1:])
