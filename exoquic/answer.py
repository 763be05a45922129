"""`exoquic run`: load the model here, answer one prompt, exit.

The answer is the only thing written to stdout, so `exoquic run "..." > file`
captures just the answer; the spinner and logs go to stderr. Nothing here
imports the HTTP server or the cluster's network code: they would only add to
the wait for the first token.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.status import Status

from exoquic.engines.sampling import SamplingParams
from exoquic.models.generation_defaults import GenerationDefaults
from exoquic.orchestration.generation import GenerationRequest
from exoquic.orchestration.node import NodeSettings, new_request_id, open_node

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Question:
    """One prompt and how to answer it; None takes the model's recommended default."""

    messages: list[dict[str, str]]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    seed: int | None = None

    def sampling(self, defaults: GenerationDefaults) -> SamplingParams:
        def pick(given: float | None, default: float) -> float:
            return default if given is None else given

        return SamplingParams(
            temperature=pick(self.temperature, defaults.temperature),
            top_p=pick(self.top_p, defaults.top_p),
            top_k=defaults.top_k,
            seed=self.seed,
        )


async def answer_once(
    settings: NodeSettings,
    question: Question,
    status: Console | None = None,
    out: TextIO | None = None,
) -> None:
    """Load the model, write the answer to `out` (stdout) as it comes, then a newline.

    `status` shows a spinner until the first token (on a terminal only)."""
    out = out or sys.stdout
    started = time.perf_counter()
    spinner = _spinner(status, f"loading {settings.model}")
    async with open_node(settings) as node:
        loaded = time.perf_counter()
        log.debug("model ready in %.2fs", loaded - started)
        if spinner is not None:
            spinner.update(f"{node.model_id}: thinking")
        request = GenerationRequest(
            request_id=new_request_id(),
            prompt_tokens=tuple(node.chat_prompt(question.messages)),
            sampling=question.sampling(node.defaults),
            max_tokens=question.max_tokens or node.defaults.max_tokens,
        )
        chunks = node.generate(request)
        assert isinstance(chunks, AsyncGenerator)  # typed as an iterator, built as a generator
        first = True
        try:
            async with aclosing(chunks):
                async for chunk in chunks:
                    if first:
                        first = False
                        log.debug("first token %.2fs after loading", time.perf_counter() - loaded)
                        if spinner is not None:
                            spinner.stop()
                    out.write(chunk.text)
                    out.flush()
        finally:
            if spinner is not None:
                spinner.stop()
        out.write("\n")


def _spinner(console: Console | None, text: str) -> Status | None:
    """A started rich Status on `console`, or None when it is not a terminal."""
    if console is None or not console.is_terminal:
        return None
    status = console.status(text)
    status.start()
    return status
