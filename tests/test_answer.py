"""`exoquic run`'s options over the model's defaults."""

from __future__ import annotations

from exoquic.answer import Question
from exoquic.engines.sampling import SamplingParams
from exoquic.models.generation_defaults import GenerationDefaults

MODEL = GenerationDefaults(temperature=0.6, top_p=0.9, top_k=50, max_tokens=300)
HELLO = [{"role": "user", "content": "hello"}]


def test_what_the_command_line_leaves_out_comes_from_the_model() -> None:
    assert Question(HELLO).sampling(MODEL) == SamplingParams(0.6, 0.9, 50, None)


def test_what_the_command_line_gives_wins_even_zero() -> None:
    question = Question(HELLO, temperature=0.0, top_p=0.5, seed=3)
    assert question.sampling(MODEL) == SamplingParams(0.0, 0.5, 50, 3)
