"""Sampling knobs and structured output with the official `openai` SDK against a
real `exoquic up` node and the bundled model (conftest `api_node`)."""

from __future__ import annotations

import json

import pytest
from api_helpers import RunningNode
from openai import OpenAI
from pydantic import BaseModel, Field

from exoquic.models.registry import DEFAULT_MODEL_ID

pytestmark = pytest.mark.slow

MODEL = DEFAULT_MODEL_ID
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
# Greedy, the model goes on with five more hellos in 16 tokens.
HELLOS = "hello hello hello hello hello hello"


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)


@pytest.fixture
def client(api_node: RunningNode) -> OpenAI:
    return OpenAI(base_url=f"{api_node.url}/v1", api_key=api_node.api_key, max_retries=0)


def test_parse_returns_a_valid_pydantic_object(client: OpenAI, api_node: RunningNode) -> None:
    question = "What is the capital of France? Answer in JSON with the city's name and country."
    completion = client.beta.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        response_format=City,
        temperature=0,
        max_tokens=80,
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, City)
    assert choice.message.parsed.name == "Paris"
    api_node.wait_idle(timeout=10)


def test_json_object_under_sampling_is_an_object(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a cat as a JSON object."}],
        response_format={"type": "json_object"},
        temperature=0.8,
        seed=3,
        max_tokens=120,
    )
    content = reply.choices[0].message.content or ""
    assert content.startswith("{")
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)


def hellos(client: OpenAI, **knobs: object) -> int:
    reply = client.completions.create(
        model=MODEL,
        prompt=HELLOS,
        temperature=0,
        max_tokens=16,
        **knobs,  # type: ignore[arg-type]
    )
    return reply.choices[0].text.count("hello")


@pytest.mark.parametrize(
    "knobs",
    [
        {"frequency_penalty": 1.0},
        {"presence_penalty": 2.0},
        {"extra_body": {"repetition_penalty": 1.3}},
    ],
)
def test_penalties_cut_repetition(client: OpenAI, knobs: dict[str, object]) -> None:
    plain = hellos(client)
    assert plain >= 4  # the pattern, continued
    assert hellos(client, **knobs) < plain


def test_logit_bias_bans_a_token(client: OpenAI) -> None:
    plain = client.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=0,
                                           max_tokens=20)  # fmt: skip
    assert "Paris" in (plain.choices[0].message.content or "")
    paris = 7042  # " Paris"
    banned = client.chat.completions.create(
        model=MODEL, messages=CAPITAL, temperature=0, max_tokens=20, logit_bias={str(paris): -100}
    )
    assert " Paris" not in (banned.choices[0].message.content or "")


def test_min_p_one_is_greedy_at_any_temperature(client: OpenAI) -> None:
    greedy = client.completions.create(model=MODEL, prompt="Water boils at", temperature=0,
                                       max_tokens=10)  # fmt: skip
    hot = client.completions.create(
        model=MODEL, prompt="Water boils at", temperature=2, seed=9, max_tokens=10,
        extra_body={"min_p": 1.0},
    )  # fmt: skip
    assert hot.choices[0].text == greedy.choices[0].text


def test_n_choices_are_each_reproducible(client: OpenAI) -> None:
    def ask(n: int, seed: int) -> list[str]:
        reply = client.chat.completions.create(
            model=MODEL, messages=CAPITAL, temperature=0.9, max_tokens=10, n=n, seed=seed,
            frequency_penalty=0.5,
        )  # fmt: skip
        assert [c.index for c in reply.choices] == list(range(n))
        return [c.message.content or "" for c in reply.choices]

    three = ask(3, 5)
    assert ask(3, 5) == three
    assert ask(1, 6) == three[1:2]
    assert len(set(three)) > 1
