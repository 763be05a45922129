"""What a generation request is and what it yields (plain data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from exoquic.engines.sampling import SamplingParams

FinishReason = Literal["stop", "length"]


class RequestError(Exception):
    """A request the node cannot serve as asked; the API maps it to a 4xx."""

    code = "invalid_request"


class ContextLengthError(RequestError):
    code = "context_length_exceeded"


class UnavailableError(Exception):
    """The cluster cannot serve requests now (no agreed plan in time, not
    enough memory on the live nodes, a step that never came back); the API
    answers 503 with this message."""

    code = "service_unavailable"


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_tokens: tuple[int, ...]
    sampling: SamplingParams
    max_tokens: int | None = None  # None: until the context is full
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerationChunk:
    """New text for the client. The last chunk carries a finish reason."""

    text: str
    token_count: int
    finish_reason: FinishReason | None = None
