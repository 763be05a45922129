"""`exoquic up`'s long-running part: the node and its API until a signal stops it.
(`exoquic run`'s one-shot answer is in exoquic.answer.)"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from exoquic.api.app import create_app
from exoquic.api.limits import AdmissionLimits
from exoquic.api.security import API_KEY_ENV, ApiSecurity, token_path
from exoquic.errors import StartupError
from exoquic.local_api import advertised, browser_urls
from exoquic.orchestration.cluster import ClusterSettings
from exoquic.orchestration.node import NodeSettings, open_node

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
    with _listen(host, port) as sock:  # before anything else: a taken port fails at once
        port = sock.getsockname()[1]  # the one the system chose for port 0
        async with open_node(settings, cluster) as node:
            config = Config()
            config.bind = [f"fd://{os.dup(sock.fileno())}"]  # Hypercorn owns (closes) the dup
            config.accesslog = None
            # Hypercorn's messages go through our logging setup (once), not its own handler.
            config.errorlog = logging.getLogger("hypercorn.error")
            config.errorlog.addFilter(_not_running_on)  # once: the same filter is kept once
            config.graceful_timeout = 2.0
            key_required = security is not None and security.api_key is not None
            log_startup(node.model_id, host, port, key_required)
            with (
                trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
                advertised(host, port, key_required),
            ):

                async def until_signalled() -> None:
                    async for signum in signals:
                        log.info("%s: shutting down", signal.Signals(signum).name)
                        return

                app = create_app(node, security, limits)
                await serve(app, config, shutdown_trigger=until_signalled)


def _not_running_on(record: logging.LogRecord) -> bool:
    """Drop Hypercorn's "Running on http://0.0.0.0:PORT": our startup line names
    the addresses a browser can open."""
    return not record.getMessage().startswith("Running on ")


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


def log_startup(model_id: str, host: str, port: int, key_required: bool) -> None:
    """Say where to point a browser (every address, when listening on all of them)
    and, when the API wants its key, where that key is."""
    urls = browser_urls(host, port)
    log.info("serving %s: chat UI at %s (OpenAI API under /v1)", model_id, ", ".join(urls))
    if key_required:
        log.info(
            "the API requires its key (%s, or %s): clients send 'Authorization: Bearer <key>', "
            "the chat UI asks for it once",
            token_path(),
            API_KEY_ENV,
        )
