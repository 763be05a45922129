"""What a generation request is and what it yields (plain data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from exoquic.engines.sampling import SamplingParams

FinishReason = Literal["stop", "length"]


class RequestError(Exception):
    """A request the node cannot serve as asked; the API maps it to a 4xx.

    `param` names the request field at fault (None: the prompt); `code` is
    the machine-readable error code, if the kind of refusal has one."""

    code: str | None = None

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


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
