"""Hostile prompts against a ring of two real `exoquic up` processes.

While one client streams a reply through the ring, another keeps posting
multi-megabyte prompts to the same node. Refusing or tokenizing them must not
stall that node's event loop: the stream's tokens keep coming (no gap over
200 ms) and the ring's keep-alives keep the peer linked (the plan stays).

The ring serves a tiny random model with the real tokenizer, so a step takes
a millisecond or two and every gap the stream shows is the node's own stall,
not the model's speed on a busy machine.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from engines.tiny_model import TINY, random_tensors
from fixtures.hf_model import hf_config_dict, write_hf_tokenizer
from ring_nodes import RingNode, engine_under_test, make_nodes, running, wait_serving
from safetensors.numpy import save_file

from exoquic.api.app import MAX_BODY_BYTES
from exoquic.models.registry import bundled_gguf_path
from exoquic.models.tokenizer import Tokenizer
from exoquic.models.weights import HEAD_NAME
from exoquic.orchestration.node import PROMPT_CHARS_MARGIN

pytestmark = pytest.mark.slow

MAX_GAP_S = 0.2
# Longer than the default --peer-timeout (3 s): a loop frozen this long loses its peer.
HOSTILE_FOR_S = 5.0
# Between rounds of hostile requests: a steady attack, not one that starves the
# two CPUs of the test machine by itself.
PAUSE_S = 0.1
# Digits and words: the slowest text per character for this tokenizer.
FILLER = "The 1234 quick brown foxes, 5678 lazy dogs; "


MODEL = "tiny-random"
# Two layers (one per node) on the real tokenizer's vocabulary.
TINY_CONFIG = dataclasses.replace(
    TINY, vocab_size=49152, hidden_size=32, intermediate_size=64, num_layers=2, max_context=2048
)


def write_tiny_model(directory: Path) -> Path:
    """A Hugging Face directory holding a random TINY_CONFIG model and SmolLM2's tokenizer."""
    directory.mkdir()
    tensors = random_tensors(TINY_CONFIG, seed=0, plain=True)
    tensors.pop(HEAD_NAME)  # tied to the embeddings, as transformers stores it
    save_file(tensors, str(directory / "model.safetensors"), {"format": "pt"})
    config = hf_config_dict(TINY_CONFIG)
    (directory / "config.json").write_text(json.dumps(config))
    write_hf_tokenizer(bundled_gguf_path(), directory)
    return directory


@pytest.fixture(scope="module")
def ring2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RingNode]]:
    model = write_tiny_model(tmp_path_factory.mktemp("model") / MODEL)
    engine = engine_under_test()
    nodes = make_nodes(
        tmp_path_factory.mktemp("ring2"), ["a", "b"], [engine] * 2, extra=("--model", str(model))
    )
    with running(nodes):
        wait_serving(nodes, 2)
        yield nodes


def filler(chars: int) -> str:
    return (FILLER * (chars // len(FILLER) + 1))[:chars]


def hostile_bodies(char_limit: int) -> list[bytes]:
    """A chat body just under the 4 MiB body limit (refused by its length), and a
    text prompt just under the character limit (tokenized, then refused)."""
    envelope = {"model": MODEL, "messages": [{"role": "user", "content": ""}]}
    room = MAX_BODY_BYTES - len(json.dumps(envelope).encode())
    envelope["messages"][0]["content"] = filler(room)
    chat = json.dumps(envelope).encode()
    text = json.dumps({"model": MODEL, "prompt": filler(char_limit)}).encode()
    assert len(chat) == MAX_BODY_BYTES
    return [chat, text]


def stream_gaps(node: RingNode, started: threading.Event, done: threading.Event) -> list[float]:
    """Seconds between the stream's events from its first until `done` is set
    (`started` is set at the first); the stream must last that long."""
    body = {
        "model": MODEL,
        "prompt": "1, 2, 3, 4, 5, 6,",  # greedy counting goes on and on
        "temperature": 0,
        "max_tokens": 1500,
        "stream": True,
    }
    gaps: list[float] = []
    with httpx.stream("POST", f"{node.url}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        last = None
        for line in response.iter_lines():
            if not line:
                continue
            assert "error" not in line, line
            now = time.monotonic()
            if last is not None:
                gaps.append(now - last)
            last = now
            started.set()
            if done.is_set():
                return gaps
    raise AssertionError(f"the stream ended before the hostile requests did: {line}")


def post_hostile(node: RingNode, bodies: list[bytes]) -> list[tuple[int, str]]:
    """Post the bodies over and over for HOSTILE_FOR_S; (status, error code) of each."""
    answers = []
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=node.url, headers=headers, timeout=60) as client:
        deadline = time.monotonic() + HOSTILE_FOR_S
        while time.monotonic() < deadline:
            for path, body in zip(["/v1/chat/completions", "/v1/completions"], bodies, strict=True):
                response = client.post(path, content=body)
                answers.append((response.status_code, response.json()["error"]["code"]))
            time.sleep(PAUSE_S)
    return answers


def test_huge_prompts_neither_stall_a_stream_nor_unlink_the_ring(ring2: list[RingNode]) -> None:
    origin = ring2[0]
    plan = origin.topology()["plan_version"]
    longest = Tokenizer.from_gguf(bundled_gguf_path()).longest_token_chars
    context = httpx.get(f"{origin.url}/v1/models", timeout=10).json()["data"][0]["context_length"]
    bodies = hostile_bodies(context * longest * PROMPT_CHARS_MARGIN)
    started, done = threading.Event(), threading.Event()
    with ThreadPoolExecutor(1) as pool:
        streaming = pool.submit(stream_gaps, origin, started, done)
        try:
            assert started.wait(60), "the stream never started"
            time.sleep(0.5)  # a few tokens' worth of gaps before the attack
            answers = post_hostile(origin, bodies)
        finally:
            done.set()
        gaps = streaming.result(timeout=60)
    assert len(gaps) > 20, f"only {len(gaps)} tokens streamed"
    worst = sorted(gaps)[-5:]
    assert max(gaps) < MAX_GAP_S, f"a {max(gaps):.2f}s gap between tokens (worst: {worst})"
    assert answers and all(a == (400, "context_length_exceeded") for a in answers), answers
    for node in ring2:
        view = node.topology()
        assert view["plan_version"] == plan, f"{node.name} changed plans:\n{node.log()[-3000:]}"
        assert all(n["live"] and n["layers"] for n in view["nodes"]), view["nodes"]
