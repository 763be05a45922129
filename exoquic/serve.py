"""Long-running entry points behind the CLI: serving the API, one-shot answers."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from exoquic.api.app import create_app
from exoquic.api.limits import AdmissionLimits
from exoquic.api.openai_routes import open_generation
from exoquic.api.security import ApiSecurity
from exoquic.engines.sampling import SamplingParams
from exoquic.errors import StartupError
from exoquic.orchestration.generation import GenerationRequest
from exoquic.orchestration.network import ClusterSettings
from exoquic.orchestration.node import NodeSettings, new_request_id, open_node

log = logging.getLogger(__name__)


async def serve_node(
    settings: NodeSettings,
    host: str,
    port: int,
    security: ApiSecurity | None = None,
    cluster: ClusterSettings | None = None,
    limits: AdmissionLimits | None = None,
) -> None:
    """Join the ring (alone without `cluster`) and serve the API and UI until
    SIGINT or SIGTERM; `limits` caps the generations its API runs at once."""
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    with _listen(host, port) as sock:  # before anything else: a taken port fails at once
        async with open_node(settings, cluster) as node:
            config = Config()
            config.bind = [f"fd://{os.dup(sock.fileno())}"]  # Hypercorn owns (closes) the dup
            config.accesslog = None
            # Hypercorn's messages go through our logging setup (once), not its own handler.
            config.errorlog = logging.getLogger("hypercorn.error")
            config.graceful_timeout = 2.0
            log.info("serving %s: chat UI at http://%s/, OpenAI API at /v1", node.model_id, address)
            if security is not None and security.api_key:
                log.info("the API requires 'Authorization: Bearer <key>' (exoquic token)")
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:

                async def until_signalled() -> None:
                    async for signum in signals:
                        log.info("%s: shutting down", signal.Signals(signum).name)
                        return

                app = create_app(node, security, limits)
                await serve(app, config, shutdown_trigger=until_signalled)


@contextmanager
def _listen(host: str, port: int) -> Iterator[socket.socket]:
    """A listening TCP socket for the API (handed to Hypercorn by file descriptor)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise StartupError(
            f"cannot serve the API on {host}:{port}: {exc.strerror or exc} "
            "(is another `exoquic up` running? choose another --api-port)"
        ) from exc
    with sock:
        yield sock


async def answer_once(
    settings: NodeSettings,
    messages: list[dict[str, str]],
    sampling: SamplingParams,
    max_tokens: int,
) -> None:
    async with open_node(settings) as node:
        request = GenerationRequest(
            request_id=new_request_id(),
            prompt_tokens=tuple(await node.encode_chat(messages)),
            sampling=sampling,
            max_tokens=max_tokens,
        )
        async with open_generation(node, request) as chunks:
            async for chunk in chunks:
                sys.stdout.write(chunk.text)
                sys.stdout.flush()
        sys.stdout.write("\n")
