"""Long-running entry points behind the CLI: serving the API, one-shot answers."""

from __future__ import annotations

import logging
import sys
from contextlib import aclosing

from hypercorn.config import Config
from hypercorn.trio import serve

from exoquic.api.app import create_app
from exoquic.api.security import ApiSecurity
from exoquic.engines.sampling import SamplingParams
from exoquic.orchestration.generation import GenerationRequest
from exoquic.orchestration.node import NodeSettings, new_request_id, open_node

log = logging.getLogger(__name__)


async def serve_node(
    settings: NodeSettings, host: str, port: int, security: ApiSecurity | None = None
) -> None:
    async with open_node(settings) as node:
        config = Config()
        config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        config.accesslog = None
        config.graceful_timeout = 2.0
        log.info("serving %s at http://%s:%d (OpenAI API under /v1)", node.model_id, host, port)
        await serve(create_app(node, security), config)  # type: ignore[arg-type]


async def answer_once(
    settings: NodeSettings,
    messages: list[dict[str, str]],
    sampling: SamplingParams,
    max_tokens: int,
) -> None:
    async with open_node(settings) as node:
        request = GenerationRequest(
            request_id=new_request_id(),
            prompt_tokens=tuple(node.chat_prompt(messages)),
            sampling=sampling,
            max_tokens=max_tokens,
        )
        async with aclosing(node.generate(request)) as chunks:
            async for chunk in chunks:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
        sys.stdout.write("\n")
