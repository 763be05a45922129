"""What a generation request is and what it yields (plain data, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from exoquic.engines.logprobs import TokenLogprob
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
    # Not None: each generated token's log-probability and this many best alternatives.
    logprobs: int | None = None
    # With logprobs: also each prompt token's (after the first), in the first chunk.
    score_prompt: bool = False


@dataclass(frozen=True)
class SampledToken:
    """A token the ring produced, with its log-probabilities when asked; the first
    token of a request that scores its prompt carries the prompt's too (one per
    prompt token after the first)."""

    token_id: int
    scored: TokenLogprob | None = None
    prompt: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class GenerationChunk:
    """New text for the client. The last chunk carries a finish reason.

    `logprobs` holds the log-probabilities of the tokens generated since the
    previous chunk (when the request asked for them): the text of a token may
    be held back (a UTF-8 character or a stop string not yet whole), so a
    chunk may carry more or fewer tokens than its text shows. An end-of-turn
    token is not among them (its text is not in the reply) but in `end`, for
    text completions, which list it as OpenAI's legacy completions do."""

    text: str
    token_count: int
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # the first chunk's, when scored
    end: TokenLogprob | None = None  # the end token that finished the reply, when scored
