"""Large prompts in process: refused before tokenizing when they cannot fit,
otherwise templated and tokenized in a bounded pool of threads."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import trio
from api_helpers import error_of

from exoquic.models.registry import DEFAULT_MODEL_ID
from exoquic.orchestration.node import PROMPT_THREADS, Node

CHAT = "/v1/chat/completions"
TEXT = "/v1/completions"


def never_tokenize(text: str) -> list[int]:
    raise AssertionError("a prompt over the character limit was tokenized")


@pytest.mark.parametrize("path", [CHAT, TEXT])
async def test_prompt_over_the_character_limit_is_refused_untokenized(
    tiny_node: Node, tiny_app_factory: Any, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    monkeypatch.setattr(tiny_node.tokenizer, "encode", never_tokenize)
    text = "x" * (tiny_node.prompt_char_limit + 1)
    if path == CHAT:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": text}]}
    else:
        body = {"prompt": text}
    response = (
        await tiny_app_factory().test_client().post(path, json={"model": DEFAULT_MODEL_ID, **body})
    )
    assert response.status_code == 400
    error = error_of(await response.get_data())
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == ("messages" if path == CHAT else "prompt")
    assert f"{len(text)} characters" in error["message"]


async def test_character_limit_counts_every_message(tiny_node: Node) -> None:
    half = tiny_node.prompt_char_limit // 2 + 1
    messages = [{"role": "user", "content": "x" * half}, {"role": "user", "content": "y" * half}]
    with pytest.raises(Exception, match="characters") as info:
        await tiny_node.encode_chat(messages)
    assert getattr(info.value, "code", None) == "context_length_exceeded"


async def test_the_limit_only_refuses_what_cannot_fit(tiny_node: Node) -> None:
    # The densest text there is: the vocabulary's longest entry, repeated.
    vocab = tiny_node.tokenizer.backend.get_vocab()
    longest = max(vocab, key=len)
    text = tiny_node.tokenizer.decode([vocab[longest]])
    assert len(text) == tiny_node.tokenizer.longest_token_chars
    repeats = tiny_node.max_context - 1
    tokens = await tiny_node.encode_text(text * repeats)
    assert len(tokens) <= repeats  # it fits, and the character limit let it through
    assert len(text) * repeats <= tiny_node.prompt_char_limit


async def test_prompts_are_tokenized_off_the_loop_in_a_bounded_pool(
    tiny_node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    running, most, loop_thread = 0, 0, threading.get_ident()
    lock = threading.Lock()

    def slow_encode(text: str) -> list[int]:
        nonlocal running, most
        assert threading.get_ident() != loop_thread
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return [1]

    monkeypatch.setattr(tiny_node.tokenizer, "encode", slow_encode)
    async with trio.open_nursery() as nursery:
        for _ in range(4 * PROMPT_THREADS):
            nursery.start_soon(tiny_node.encode_text, "hello")
    assert most == PROMPT_THREADS
