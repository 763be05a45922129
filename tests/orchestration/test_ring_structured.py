"""Structured output and the sampling knobs across a 2-node ring of real
`exoquic up` processes (the bundled model; the last node samples, the first
holds the request): the openai SDK's `parse` returns a valid object."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI
from pydantic import BaseModel, Field
from ring_nodes import RingNode, engine_under_test, make_nodes, running, wait_serving

from exoquic.models.registry import DEFAULT_MODEL_ID

pytestmark = pytest.mark.slow

# Neither node alone holds the model (126 MiB at 80% of the limit): they split it.
SMALL_NODE = ("--memory-limit", "100M")
QUESTION = "What is the capital of France? Answer in JSON with the city's name and country."


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)


@pytest.fixture(scope="module")
def ring2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RingNode]]:
    engine = engine_under_test()
    nodes = make_nodes(tmp_path_factory.mktemp("ring2"), ["s0", "s1"], [engine] * 2,
                       extra=SMALL_NODE)  # fmt: skip
    with running(nodes):
        wait_serving(nodes, 2)
        yield nodes


def client(node: RingNode) -> OpenAI:
    return OpenAI(base_url=f"{node.url}/v1", api_key="unused", max_retries=0)


def test_parse_across_the_ring(ring2: list[RingNode]) -> None:
    for origin in ring2:  # one holds the last shard and samples, the other does not
        completion = client(origin).beta.chat.completions.parse(
            model=DEFAULT_MODEL_ID,
            messages=[{"role": "user", "content": QUESTION}],
            response_format=City,
            temperature=0.7,
            seed=4,
            max_tokens=80,
        )
        choice = completion.choices[0]
        assert choice.finish_reason == "stop", origin.log()[-2000:]
        assert isinstance(choice.message.parsed, City)


def test_seeded_penalties_give_the_same_reply_from_either_origin(ring2: list[RingNode]) -> None:
    replies = set()
    for origin in ring2:
        reply = client(origin).completions.create(
            model=DEFAULT_MODEL_ID, prompt="hello hello hello hello hello hello", max_tokens=16,
            temperature=0.8, seed=7, frequency_penalty=1.0,
            extra_body={"repetition_penalty": 1.2, "min_p": 0.05},
        )  # fmt: skip
        replies.add(reply.choices[0].text)
    assert len(replies) == 1
    assert replies.pop().count("hello") < 5
