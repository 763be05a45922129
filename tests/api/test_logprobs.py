"""Log-probabilities in chat and text completions, in process (the real app,
tokenizer, worker and MLX engine on a random 2-layer model: see conftest
`tiny_node`), checked against the same weights run directly."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from api_helpers import TINY_CONFIG, sse_payloads, tiny_weights
from engines.reference import reference_forward

from exoquic.api.openai_routes import LogprobShape
from exoquic.api.tools import ReplyPiece
from exoquic.engines.logprobs import TokenLogprob, log_softmax
from exoquic.engines.mlx.engine import MLXEngine
from exoquic.models.registry import DEFAULT_MODEL_ID
from exoquic.models.tokenizer import Tokenizer

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"
MODEL = DEFAULT_MODEL_ID
HELLO = [{"role": "user", "content": "Hello"}]
# Greedy: each chosen token is the most likely one.
TINY_REQUEST = {"model": MODEL, "max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def reference_engine() -> MLXEngine:
    """The tiny model's weights in an engine of the test's own, run directly."""
    engine = MLXEngine(max_context=TINY_CONFIG.max_context)
    engine.load(tiny_weights(TINY_CONFIG))
    return engine


def first_token_logprobs(engine: MLXEngine, prompt: list[int]) -> np.ndarray:
    """The log-probabilities of the token after `prompt`, from the engine's logits."""
    try:
        return log_softmax(engine.forward("reference", np.asarray(prompt, dtype=np.int32)))
    finally:
        engine.release("reference")


async def post_json(client: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post(path, json=body)
    assert response.status_code == 200, await response.get_data()
    return json.loads(await response.get_data())


async def test_chat_logprobs_match_the_model(
    tiny_app_factory: Any, smollm2_tokenizer: Tokenizer, reference_engine: MLXEngine
) -> None:
    client = tiny_app_factory().test_client()
    body = await post_json(
        client, CHAT, {**TINY_REQUEST, "messages": HELLO, "logprobs": True, "top_logprobs": 3}
    )
    choice = body["choices"][0]
    content = choice["logprobs"]["content"]
    assert len(content) == body["usage"]["completion_tokens"]
    # The tokens' bytes make up the reply.
    assert (
        bytes(b for entry in content for b in entry["bytes"]).decode()
        == (choice["message"]["content"])
    )
    for entry in content:
        assert len(entry["top_logprobs"]) == 3
        best = entry["top_logprobs"][0]
        assert (best["token"], best["logprob"]) == (entry["token"], entry["logprob"])
        assert [t["logprob"] for t in entry["top_logprobs"]] == sorted(
            (t["logprob"] for t in entry["top_logprobs"]), reverse=True
        )
    # The first token's numbers are the model's own (float32 logits: within 1e-4).
    prompt = smollm2_tokenizer.encode(smollm2_tokenizer.apply_chat_template(HELLO))
    expected = first_token_logprobs(reference_engine, prompt)
    first = smollm2_tokenizer.encode(content[0]["token"])
    assert content[0]["logprob"] == pytest.approx(float(expected.max()), abs=1e-4)
    assert len(first) >= 1 and int(np.argmax(expected)) in first


async def test_chat_without_logprobs_has_none(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    body = await post_json(client, CHAT, {**TINY_REQUEST, "messages": HELLO})
    assert body["choices"][0]["logprobs"] is None


async def test_chat_stream_chunks_carry_logprobs(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    request = {**TINY_REQUEST, "messages": HELLO, "logprobs": True, "stream": True}
    response = await client.post(CHAT, json=request)
    chunks = sse_payloads(await response.get_data())
    with_text = [c["choices"][0] for c in chunks[1:] if c["choices"][0]["delta"].get("content")]
    assert with_text
    for choice in with_text:
        entries = choice["logprobs"]["content"]
        assert entries and all(e["logprob"] <= 0 and e["top_logprobs"] == [] for e in entries)
        assert bytes(b for e in entries for b in e["bytes"]).decode() == choice["delta"]["content"]


async def test_text_logprobs_streamed_and_whole_agree(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    request = {**TINY_REQUEST, "prompt": "The capital of France is", "logprobs": 2}
    whole = (await post_json(client, TEXT, request))["choices"][0]
    logprobs = whole["logprobs"]
    assert "".join(logprobs["tokens"]) == whole["text"]
    assert logprobs["text_offset"] == [
        sum(map(len, logprobs["tokens"][:i])) for i in range(len(logprobs["tokens"]))
    ]
    for token, value, top in zip(
        logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True
    ):
        # The chosen token and up to 2 alternatives; greedy: the chosen one is the best.
        assert top[token] == value == max(top.values()) and 1 <= len(top) <= 3
        assert math.isfinite(value) and value <= 0
    response = await client.post(TEXT, json={**request, "stream": True})
    chunks = [c["choices"][0] for c in sse_payloads(await response.get_data())]
    streamed = [c["logprobs"] for c in chunks if c["logprobs"]]
    for key in ("token_logprobs", "text_offset"):
        assert [value for part in streamed for value in part[key]] == logprobs[key]


async def test_streamed_tool_call_replies_keep_every_logprob(tiny_app_factory: Any) -> None:
    """A forced call holds the whole reply back (tool calls): its tokens'
    log-probabilities still all come, once each, before the stream ends."""
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip
    request = {**TINY_REQUEST, "messages": HELLO, "logprobs": True, "stream": True,
               "max_tokens": 6, "tools": [tool], "tool_choice": "required",
               "stream_options": {"include_usage": True}}  # fmt: skip
    client = tiny_app_factory().test_client()
    response = await client.post(CHAT, json=request)
    chunks = sse_payloads(await response.get_data())
    entries = [
        entry
        for c in chunks
        if c["choices"] and c["choices"][0]["logprobs"]
        for entry in c["choices"][0]["logprobs"]["content"]
    ]
    assert len(entries) == chunks[-1]["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize(
    "text",
    # one prefill chunk; several (the ring sends 128 positions a Forward)
    ["The capital of France is Paris", " ".join(f"w{i}" for i in range(60))],
    ids=["short", "chunked"],
)
async def test_echo_scores_the_prompt_like_a_float64_forward_pass(
    tiny_app_factory: Any, smollm2_tokenizer: Tokenizer, text: str
) -> None:
    # What lm-evaluation-harness's local-completions sends to score a continuation.
    prompt = smollm2_tokenizer.encode(text)
    request = {**TINY_REQUEST, "prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 1}
    client = tiny_app_factory().test_client()
    choice = (await post_json(client, TEXT, request))["choices"][0]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == len(prompt) + 1  # the prompt, then one new token
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    assert choice["text"].startswith(smollm2_tokenizer.decode(prompt))
    assert "".join(logprobs["tokens"]) == choice["text"]
    # Independent of the engines: numpy's float64 forward over the same weights.
    logits = reference_forward(tiny_weights(TINY_CONFIG), np.asarray(prompt))
    expected = [log_softmax(logits[i - 1])[prompt[i]] for i in range(1, len(prompt))]
    got = logprobs["token_logprobs"][1 : len(prompt)]
    # The MLX engine computes in float32: per token within 1e-4, the sum within 1e-3.
    assert got == pytest.approx(expected, abs=1e-4)
    assert math.fsum(got) == pytest.approx(math.fsum(expected), abs=1e-3)
    for i, top in enumerate(logprobs["top_logprobs"][1:], start=1):
        best = float(log_softmax(logits[i - 1]).max())
        assert max(top.values()) == pytest.approx(best, abs=1e-4)


async def test_echo_streams_the_prompt_first(
    tiny_app_factory: Any, smollm2_tokenizer: Tokenizer
) -> None:
    request = {**TINY_REQUEST, "prompt": "Hello there", "echo": True, "logprobs": 0}
    client = tiny_app_factory().test_client()
    whole = (await post_json(client, TEXT, request))["choices"][0]
    response = await client.post(TEXT, json={**request, "stream": True})
    chunks = [c["choices"][0] for c in sse_payloads(await response.get_data())]
    assert chunks[0]["text"].startswith("Hello there")
    assert "".join(c["text"] for c in chunks) == whole["text"]
    streamed = [v for c in chunks if c["logprobs"] for v in c["logprobs"]["token_logprobs"]]
    assert streamed == whole["logprobs"]["token_logprobs"]
    assert streamed[0] is None and len(streamed) > len(smollm2_tokenizer.encode("Hello there"))


async def test_echo_without_logprobs_repeats_the_prompt(tiny_app_factory: Any) -> None:
    client = tiny_app_factory().test_client()
    body = await post_json(client, TEXT, {**TINY_REQUEST, "prompt": "Hi you", "echo": True})
    assert body["choices"][0]["text"].startswith("Hi you")
    assert body["choices"][0]["logprobs"] is None


def test_text_completions_list_the_end_token_chat_does_not(smollm2_tokenizer: Tokenizer) -> None:
    # With max_tokens 1, lm-evaluation-harness drops the last entry as the generated
    # token: an end token must be there, or it would drop a prompt token instead.
    end_id = smollm2_tokenizer.eos_token_id
    assert end_id is not None
    prompt = smollm2_tokenizer.encode("Hi there")
    scored = (TokenLogprob(prompt[1], -1.0, ((prompt[1], -1.0),)),)
    chunk = ReplyPiece("", 0, "stop", (), (), scored, end=TokenLogprob(end_id, -0.5, ()))
    text = LogprobShape(smollm2_tokenizer, chat=False, echo=prompt).format(chunk)
    assert text["tokens"] == ["Hi", " there", smollm2_tokenizer.decode([end_id])]
    assert text["token_logprobs"] == [None, -1.0, -0.5]
    assert LogprobShape(smollm2_tokenizer, chat=True).format(chunk)["content"] == []
