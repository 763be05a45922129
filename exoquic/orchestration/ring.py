"""Generation around the ring: the origin's step loop, and serving forward steps.

The *origin* is the node holding the request. For each step it sends
`Forward(tokens)` to the plan's first node; every node runs its shard through
its `EngineWorker` (so concurrent requests' decode steps batch) and passes
the hidden state to its successor; the last node samples and sends
`TokenResult` back to the origin. The last node keeps one sampler per request
(made from the sampling parameters the prompt's steps carry, dropped when the
request is released); its draw for step n depends on (seed, n). Messages to
this node itself take the same path as a peer's (`receive`) without touching
the network: a ring of one is a plain local loop.

The ring owns the request flow only: it reads plans (`PlanView`), sends
through `Peers` (`SendRemote`), and is told of peers leaving and plan changes
(`peer_left`, `interrupt`, `fail_all`, `forget_served`); it calls into neither.

Each try of a request (an *attempt*) runs under one plan version with its own
wire request id `<request id>.<attempt>`, so KV caches of different tries never
mix. When a node of the plan dies or the plan changes, the origin replays the
request from its token history under the next plan: the prompt as it was sent
the first time, then each token generated so far as the decode step it was, so
that every node computes each position exactly as before (see `_send_history`).
Greedy output is then bit for bit what it would have been, and so is seeded
output. The replay's last node makes a new sampler, which draws the generated
tokens again on the replayed steps and so has seen all of them when the
request goes on.

A long prompt leaves the origin in chunks of `PREFILL_CHUNK` positions, one
`Forward` each, all at once: the second node works on the first chunk while
the first node works on the next, so a prompt's prefill is pipelined around
the ring instead of waiting for each node to finish all of it. Every chunk's
step comes back as a token; the origin keeps the last chunk's.

A request's prompt may start from the kept caches of an earlier request's
prompt (the prefix cache, see prefix.py): the origin looks the prompt up in
its `PrefixIndex` and sends only the rest, its first `Forward` naming the
entry to copy; when a request ends, its `Release` asks the nodes to keep its
caches, which each node's `PrefixStore` holds within its byte budget. A node
that evicted the entry answers with a miss, and the origin sends the whole
prompt in a new attempt under the same plan.

Concurrent requests form a pipeline too: each node caps its decode batches at
its live requests divided by the ring's length (`pipeline_batch`), so the
requests split into one group per node and every node works on one group
while its neighbours work on the others. One batch of all of them would move
around the ring as a convoy, with every node but one idle.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any, Protocol

import numpy as np
import trio

from exoquic import defaults
from exoquic.engines.constraints import ConstraintCompiler
from exoquic.engines.logprobs import TokenLogprob, token_logprob
from exoquic.engines.sampling import RequestSampler, SamplingParams
from exoquic.orchestration.generation import SampledToken, UnavailableError
from exoquic.orchestration.peers import PeerUnavailable
from exoquic.orchestration.prefix import PrefixHit, PrefixIndex, PrefixStore, reusable_length
from exoquic.orchestration.sampling_wire import (
    BadSamplingError,
    sampling_from_wire,
    sampling_to_wire,
)
from exoquic.orchestration.worker import PREFILL_CHUNK, EngineWorker, Job
from exoquic.topology import Plan
from exoquic.wire.messages import (
    MAX_REASON_LENGTH,
    Forward,
    Message,
    Release,
    RequestFailed,
    TokenResult,
)

log = logging.getLogger(__name__)

RELEASE_TIMEOUT = 2.0
RELEASED_MEMORY = 4096  # released request ids remembered, to drop their late steps


class StepFailedError(Exception):
    """A node's engine refused a step of the request; replaying would not help."""


class PlanView(Protocol):
    """What the ring reads of this node's plans (`plans.Plans`)."""

    def serving_plan(self, version: int) -> Plan | None:
        """The plan `version` if this node holds its shard of it now, else None."""

    async def wait_usable_plan(self, newer_than: int) -> Plan:
        """An active plan newer than `newer_than`; raises UnavailableError on timeout
        or when the live nodes cannot hold the model."""


SendRemote = Callable[[str, Message], Awaitable[None]]
"""Hands a message to a peer (`Peers.send`); raises PeerUnavailable."""

FollowUp = Callable[[], Awaitable[None]]
"""What is left to do for a message once it was accepted: run the step and pass
its output on, or send a refusal. A message from a peer gets it run in a task
of its own; one from this node, inline in the sender's task."""


@dataclass(frozen=True)
class RingSettings:
    step_timeout: float = 60.0
    """Seconds a step may take before the request fails..."""
    step_timeout_per_token: float = 1.0
    """...plus this much per input token (a long prefill on a slow CPU)."""
    max_attempts: int = 4
    """Tries of one request (the first and its replays) before it fails."""
    max_caches_per_peer: int = 256
    """KV caches one peer's `Forward`s may hold open on this node at a time
    (each costs memory for up to the whole context). A relaying node sends
    the steps of every origin's requests, so this is four nodes' worth of
    the API's default 64 concurrent requests."""
    prefix_cache_bytes: int = defaults.PREFIX_CACHE_BYTES
    """Bytes of finished requests' KV caches this node keeps for later requests
    that share their prompt's beginning (0: no prefix cache; this node then
    neither keeps caches nor asks others to)."""


@dataclass
class RingStatistics:
    requests: int = 0
    steps: int = 0  # steps this node originated
    step_seconds: float = 0.0  # from sending Forward to receiving TokenResult
    replays: int = 0
    replay_mismatches: int = 0  # replays that sampled a token other than the first try's
    failed_requests: int = 0
    forwards: int = 0  # forward steps this node ran
    compute_seconds: float = 0.0  # engine time of those steps (a batch's time each)
    forwarded_positions: int = 0
    prefix_hits: int = 0  # requests this node originated that started from a kept prefix
    prefix_misses: int = 0  # ...that a node no longer held, so the prompt went again in full
    reused_positions: int = 0  # prompt positions those hits did not send

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class _Failure:
    reason: str
    retryable: bool
    prefix_miss: bool = False


@dataclass
class _Served:
    """A request whose cache this node holds: its origin, plan and positions."""

    origin: str
    plan_version: int
    positions: int = 0


class _Attempt:
    """One try of a request at its origin: its wire id, plan and result inbox, and
    how many alternatives its tokens' log-probabilities carry (None: none asked)."""

    def __init__(
        self, wire_id: str, plan: Plan, logprobs: int | None = None, score: bool = False
    ) -> None:
        self.wire_id = wire_id
        self.plan = plan
        self.logprobs = logprobs
        self.score = score  # score the prompt's tokens (sent with its chunks)
        self.sent_at = 0.0  # when the step in flight was sent
        self.results_due = 0  # results of the step in flight (one per Forward sent)
        self.positions = 0  # positions the step in flight runs (its timeout grows with them)
        self.prefilled = False  # the prompt's step came back: every node holds its positions
        self._send, self._receive = trio.open_memory_channel[TokenResult | _Failure](math.inf)

    def put(self, outcome: TokenResult | _Failure) -> None:
        # Bounded by what is due: only stray duplicates could go beyond it.
        if self._send.statistics().current_buffer_used >= self.results_due + 4:
            log.warning("dropping an unexpected result for %s", self.wire_id)
            return
        self._send.send_nowait(outcome)

    async def get(self) -> TokenResult | _Failure:
        return await self._receive.receive()


class _PrefixMiss(Exception):
    """A node no longer holds the kept prefix the attempt started from."""


class _Retry(Exception):
    def __init__(self, failure: _Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


class Ring:
    """The request flow of one node, as origin and as a shard in others' requests."""

    def __init__(
        self,
        node_id: str,
        plans: PlanView,
        send_remote: SendRemote,
        worker: EngineWorker,
        settings: RingSettings | None = None,
    ) -> None:
        self.node_id = node_id
        self.plans = plans
        self.worker = worker
        self.settings = settings or RingSettings()
        self.stats = RingStatistics()
        self._send_remote = send_remote
        # As origin: the requests this node holds, and their attempts in flight by wire id.
        self._requests: set[str] = set()
        self._attempts: dict[str, _Attempt] = {}
        # As a shard of others' requests (and of this node's), by wire id: the origin
        # of each request whose cache this node holds, who opened it, and (on the
        # last shard) its sampler, kept for the request's life.
        self._served: dict[str, _Served] = {}
        self._opened_by: dict[str, str] = {}
        self._caches_per_peer: Counter[str] = Counter()
        self._samplers: dict[str, RequestSampler] = {}
        self._released: OrderedDict[str, None] = OrderedDict()  # the latest released wire ids
        self._shard_epoch = 0  # counts shard replacements: a step may outlive its shard
        self.constraints: ConstraintCompiler | None = None  # the node sets it: needs the tokenizer
        # The prefix cache: as origin, the prompts the ring keeps; as a shard, the caches.
        self._prefixes = PrefixIndex(align=PREFILL_CHUNK)
        self._kept = PrefixStore(self.settings.prefix_cache_bytes)

    # --- origin -------------------------------------------------------------

    async def generate_tokens(
        self, request_id: str, prompt: list[int], sampling: SamplingParams, budget: int
    ) -> AsyncGenerator[int, None]:
        """The request's tokens, one per step, until `budget` (close it to stop early).

        Raises UnavailableError when the ring cannot serve it (no plan in time,
        not enough memory, too many failed tries), StepFailedError when an
        engine refused it.
        """
        results = self.generate_results(request_id, prompt, sampling, budget)
        async with aclosing(results):
            async for result in results:
                yield result.token_id

    async def generate_results(
        self,
        request_id: str,
        prompt: list[int],
        sampling: SamplingParams,
        budget: int,
        logprobs: int | None = None,
        score_prompt: bool = False,
    ) -> AsyncGenerator[SampledToken, None]:
        """`generate_tokens` with each token's log-probability and `logprobs` best
        alternatives when `logprobs` is not None; with `score_prompt` too, the
        first token carries the prompt tokens' (all but the first)."""
        if sampling.seed is None:  # fixed here so that replays draw the same tokens
            sampling = replace(sampling, seed=secrets.randbits(63))
        self.stats.requests += 1
        self._requests.add(request_id)
        try:
            # aclosing: a caller that stops early releases the attempt's caches now.
            tries = self._tries(request_id, prompt, sampling, budget, logprobs, score_prompt)
            async with aclosing(tries):
                async for result in tries:
                    yield result
        finally:
            self._requests.discard(request_id)

    @property
    def live_requests(self) -> int:
        """Requests this node originates now (from their first step to their end)."""
        return len(self._requests)

    @property
    def kept_caches(self) -> int:
        """Finished requests' caches this node keeps in its prefix cache."""
        return self._kept.statistics().entries

    @property
    def kept_bytes(self) -> int:
        """Bytes of the caches this node keeps in its prefix cache."""
        return self._kept.statistics().bytes

    async def _tries(
        self,
        request_id: str,
        prompt: list[int],
        sampling: SamplingParams,
        budget: int,
        logprobs: int | None,
        score_prompt: bool,
    ) -> AsyncGenerator[SampledToken, None]:
        """`generate_tokens`' attempts: the first, then replays under newer plans."""
        tokens: list[int] = []
        newer_than = -1
        reuse = True  # start from a kept prefix (not again after a miss)
        for attempt_number in range(self.settings.max_attempts):
            plan = await self.plans.wait_usable_plan(newer_than)
            # A replay after the first token went out need not score the prompt again.
            score = score_prompt and logprobs is not None and not tokens
            attempt = _Attempt(f"{request_id}.{attempt_number}", plan, logprobs, score)
            self._attempts[attempt.wire_id] = attempt
            # Scoring the prompt needs its every position run, and the repetition
            # penalty every prompt token at the last shard: no kept prefix then.
            whole = score or sampling.repetition_penalty != 1.0
            hit = self._prefix_hit(plan, prompt) if reuse and not tokens and not whole else None
            try:
                if len(tokens) < budget:
                    await self._send_history(attempt, prompt, tokens, sampling, hit)
                replayed = list(tokens)  # what this try's first step must sample again
                while len(tokens) < budget:
                    results = await self._step_results(attempt)
                    attempt.prefilled = True
                    if replayed:
                        self._check_replay(request_id, replayed, results)
                        replayed = []
                    tokens.append(results[-1].token_id)
                    # The next step starts before this token goes out, so the engines
                    # work while the caller streams it; if the caller stops here, the
                    # release below frees what that step computed.
                    unsent: _Retry | None = None
                    if len(tokens) < budget:
                        position = len(prompt) + len(tokens) - 1
                        try:
                            await self._send_step(
                                attempt, tokens[-1:], position, len(tokens), sampling
                            )
                        except _Retry as retry:
                            unsent = retry  # replay after the caller has this token
                    yield _sampled(results, prompt if attempt.score and len(tokens) == 1 else None)
                    if unsent is not None:
                        raise unsent
                return
            except _PrefixMiss:
                assert hit is not None
                log.info("request %s: prefix %s was evicted; sending it all", request_id, hit.entry)
                self.stats.prefix_misses += 1
                self._prefixes.discard(hit.entry)
                reuse = False
            except _Retry as retry:
                log.warning(
                    "request %s: %s; replaying %d tokens under a newer plan",
                    request_id,
                    retry.failure.reason,
                    len(prompt) + len(tokens),
                )
                self.stats.replays += 1
                newer_than = plan.version
            finally:
                del self._attempts[attempt.wire_id]
                await self._release(attempt, prompt)
        self.stats.failed_requests += 1
        raise UnavailableError(f"request failed after {self.settings.max_attempts} tries")

    def _prefix_hit(self, plan: Plan, prompt: list[int]) -> PrefixHit | None:
        """The kept prefix the prompt may start from, if prefix caching is on."""
        if not self.settings.prefix_cache_bytes:
            return None
        hit = self._prefixes.lookup(plan.version, prompt)
        if hit is not None:
            self.stats.prefix_hits += 1
            self.stats.reused_positions += hit.length
        return hit

    async def _send_history(
        self,
        attempt: _Attempt,
        prompt: list[int],
        tokens: list[int],
        sampling: SamplingParams,
        hit: PrefixHit | None = None,
    ) -> None:
        """Start a try: send the prompt and, on a replay, the tokens generated so far.

        A replay computes every position exactly as the first try did: the prompt
        in the same chunks, then each generated token as the decode step it was (same
        position, same step index), all sent at once. Engines compute a prompt's rows
        and a decode step's row with different kernels that agree only up to rounding
        (tinygrad: a float32 GEMM for prefill chunks, integer dot products for decode
        rows), so replaying the history as one prefill would change the cache a little,
        and a near-tie later could flip a token that the first try would have drawn.
        Step by step, the replay samples the tokens already generated again
        (`_check_replay`) and continues exactly where the first try stopped.

        The prompt may start from a kept prefix (`hit`): its positions are those a
        cold run computes, and the rest goes in the chunks a cold run's would.
        """
        self._begin_step(attempt)
        start = hit.length if hit is not None else 0
        await self._send_chunks(attempt, prompt[start:], start, 0, sampling, hit)
        for i, token in enumerate(tokens):
            await self._send_chunks(attempt, [token], len(prompt) + i, i + 1, sampling)

    async def _send_step(
        self,
        attempt: _Attempt,
        inputs: list[int],
        position: int,
        step: int,
        sampling: SamplingParams,
    ) -> None:
        """Send one step's tokens (the attempt gets its results)."""
        self._begin_step(attempt)
        await self._send_chunks(attempt, inputs, position, step, sampling)

    def _begin_step(self, attempt: _Attempt) -> None:
        attempt.sent_at = time.perf_counter()
        attempt.results_due = 0
        attempt.positions = 0

    async def _send_chunks(
        self,
        attempt: _Attempt,
        inputs: list[int],
        position: int,
        step: int,
        sampling: SamplingParams,
        hit: PrefixHit | None = None,
    ) -> None:
        """Send tokens to the plan's first node, a long prompt in chunks (see the
        module docstring): one result is due for each `Forward`. The first names
        the kept prefix `hit` the request starts from, if any."""
        plan = attempt.plan
        tokens = np.asarray(inputs, dtype=np.int32)
        attempt.positions += len(tokens)
        # The last shard makes the request's sampler from the prompt's steps (step 0).
        wire_sampling = sampling_to_wire(sampling) if step == 0 else None
        score = attempt.score and step == 0
        for start in range(0, len(tokens), PREFILL_CHUNK):
            chunk = tokens[start : start + PREFILL_CHUNK]
            # Each position's next prompt token (the last position's is the one sampled).
            targets = tuple(int(t) for t in tokens[start + 1 : start + 1 + PREFILL_CHUNK])
            message = Forward(
                attempt.wire_id,
                plan.version,
                position + start,
                chunk,
                origin=self.node_id,
                step=step,
                sampling=wire_sampling,
                logprobs=attempt.logprobs,
                score=targets if score and targets else None,
                reuse_from=hit.entry if hit is not None and start == 0 else None,
                reuse_length=hit.length if hit is not None and start == 0 else 0,
                # The last shard sees hidden states: it learns the tokens so far
                # from these, sent only when the draws depend on them.
                tokens=tuple(int(t) for t in chunk) if sampling.uses_history else (),
            )
            attempt.results_due += 1  # before sending: a local ring answers within the send
            try:
                await self.send(plan.first_node, message)
            except PeerUnavailable as exc:
                raise _Retry(_Failure(str(exc), True)) from exc

    async def _step_results(self, attempt: _Attempt) -> list[TokenResult]:
        """The tokens of the step in flight, one per `Forward` in sending order (the
        last is the step's token), or _Retry / StepFailedError / UnavailableError."""
        per_token = self.settings.step_timeout_per_token
        timeout = self.settings.step_timeout + per_token * attempt.positions
        results: list[TokenResult] = []
        with trio.move_on_after(timeout):
            while True:
                outcome = await attempt.get()
                if isinstance(outcome, _Failure):
                    if outcome.prefix_miss:
                        raise _PrefixMiss(outcome.reason)
                    if outcome.retryable:
                        raise _Retry(outcome)
                    self.stats.failed_requests += 1
                    raise StepFailedError(outcome.reason)
                results.append(outcome)
                attempt.results_due -= 1
                if attempt.results_due <= 0:
                    self.stats.steps += 1
                    self.stats.step_seconds += time.perf_counter() - attempt.sent_at
                    return results
        self.stats.failed_requests += 1
        raise UnavailableError(f"no answer from the ring within {timeout:.0f} s")

    def _check_replay(
        self, request_id: str, replayed: list[int], results: list[TokenResult]
    ) -> None:
        """Warn when a replay sampled other tokens than the first try: the ring now
        computes differently (another engine under the new plan, say), so the rest
        of the answer may differ from what the first try would have said."""
        again = [result.token_id for result in results[-len(replayed) - 1 : -1]]
        if again != replayed:
            first = next(i for i, (a, b) in enumerate(zip(again, replayed, strict=True)) if a != b)
            self.stats.replay_mismatches += 1
            log.warning(
                "request %s: the replay sampled token %d differently (%d, first try %d)",
                request_id,
                first,
                again[first],
                replayed[first],
            )

    async def _release(self, attempt: _Attempt, prompt: list[int]) -> None:
        """Tell every node of the attempt's plan to free its cache (best effort), or
        to keep the prompt's whole chunks for later requests (the prefix cache)."""
        keep = 0
        if attempt.prefilled and self.settings.prefix_cache_bytes:
            keep = reusable_length(len(prompt), PREFILL_CHUNK)
        if keep:
            self._prefixes.add(attempt.wire_id, attempt.plan.version, prompt[:keep])
        with trio.CancelScope(shield=True), trio.move_on_after(RELEASE_TIMEOUT):
            for node_id in attempt.plan.node_ids:
                await self._send_quietly(node_id, Release(attempt.wire_id, keep))

    def interrupt(self, affected: Callable[[Plan], bool], reason: str) -> None:
        """Make every attempt whose plan is `affected` replay under a newer plan."""
        for attempt in list(self._attempts.values()):
            if affected(attempt.plan):
                attempt.put(_Failure(reason, retryable=True))

    def fail_all(self, reason: str) -> None:
        """End every attempt this node originated with a final error."""
        for attempt in list(self._attempts.values()):
            attempt.put(_Failure(reason, retryable=False))

    # --- messages: the one path for a peer's and this node's own -------------

    async def send(self, node_id: str, message: Message) -> None:
        """Deliver to `node_id`; to this node itself without touching the network
        (a ring of one is a plain local loop). Raises PeerUnavailable."""
        if node_id != self.node_id:
            await self._send_remote(node_id, message)
            return
        follow_up = self.receive(self.node_id, message)
        if follow_up is not None:
            await follow_up()

    def receive(self, sender: str, message: Message) -> FollowUp | None:
        """Handle a ring message from `sender` (a peer or this node); what is left
        to do for it, if anything (see `FollowUp`). A forward step is queued on
        the engine here, so steps run in the order they arrive."""
        if isinstance(message, Forward):
            return self._accept(message, sender)
        if isinstance(message, TokenResult):
            self._deliver_outcome(message.request_id, message)
        elif isinstance(message, RequestFailed):
            failure = _Failure(message.reason, message.retryable, message.prefix_miss)
            self._deliver_outcome(message.request_id, failure)
        elif isinstance(message, Release):
            self._release_cache(message.request_id, message.keep)
        return None

    def _deliver_outcome(self, wire_id: str, outcome: TokenResult | _Failure) -> None:
        attempt = self._attempts.get(wire_id)
        if attempt is not None:  # else a late answer to an abandoned attempt
            attempt.put(outcome)

    def _release_cache(self, wire_id: str, keep: int = 0) -> None:
        """Free the request's cache, or keep it in the prefix cache (`keep` > 0:
        its first `keep` positions may be reused) while the budget allows."""
        served = self._served.pop(wire_id, None)
        self._samplers.pop(wire_id, None)
        self._uncount(wire_id)
        self._released[wire_id] = None
        while len(self._released) > RELEASED_MEMORY:
            self._released.popitem(last=False)
        freed = [wire_id]
        if served is not None and keep:
            # A pure read of the loaded shard's shape (no engine call in flight changes it).
            nbytes = served.positions * self.worker.engine.cache_bytes_per_position()
            positions = min(keep, served.positions)
            freed = self._kept.keep(wire_id, served.plan_version, positions, nbytes)
        self._free_caches(freed)

    def _free_caches(self, wire_ids: list[str]) -> None:
        engine = self.worker.engine
        for wire_id in wire_ids:
            self.worker.call_nowait(partial(engine.release, wire_id))

    # --- serving a shard ----------------------------------------------------

    def _accept(self, message: Forward, sender: str) -> FollowUp | None:
        """Queue a forward step on the engine now; instead, refuse it when this node
        does not serve its plan, or drop it when the request was released already."""
        wire_id = message.request_id
        if wire_id in self._released:
            # Its origin may release it while a step is still on its way here (a
            # step it started before the caller stopped): that step must not
            # make a cache that nobody would free.
            return None
        plan = self.plans.serving_plan(message.plan_version)
        shard = plan.shard_of(self.node_id) if plan is not None else None
        if plan is None or shard is None:
            return partial(self._send_quietly, message.origin, self._refusal(message))
        if wire_id not in self._served and not self._count_new_cache(wire_id, sender):
            refusal = RequestFailed(
                wire_id,
                f"{sender} holds {self.settings.max_caches_per_peer} requests open on "
                f"{self.node_id}, the most one peer may",
                retryable=False,  # the same ring would refuse the replay too
            )
            return partial(self._send_quietly, message.origin, refusal)
        copy: Job | None = None
        if message.reuse_from is not None and wire_id not in self._served:
            copy = self._copy_prefix(message)
            if copy is None:
                self._uncount(wire_id)
                self._released[wire_id] = None  # drop its later chunks: it starts over
                return partial(self._send_quietly, message.origin, self._prefix_miss(message))
        served = self._served.setdefault(
            wire_id, _Served(message.origin, message.plan_version, message.reuse_length)
        )
        served.positions += int(message.tensor.shape[0])
        self.worker.limit_batches(pipeline_batch(len(self._served), len(plan.node_ids)))
        scoring = shard.is_last and message.score is not None
        job = self.worker.forward_nowait(wire_id, message.tensor, all_logits=scoring)
        onward = None if shard.is_last else plan.next_node(self.node_id)
        return partial(self._finish, message, job, onward, self._shard_epoch, copy)

    def _copy_prefix(self, message: Forward) -> Job | None:
        """Queue copying the kept prefix the request starts from into its cache
        (before its first step, which is queued next); None when not kept."""
        entry, length = message.reuse_from, message.reuse_length
        assert entry is not None
        if not self._kept.take(entry, message.plan_version, length):
            return None
        copy = partial(self.worker.engine.copy_prefix, entry, message.request_id, length)
        return self.worker.call_nowait(copy)

    def _prefix_miss(self, message: Forward) -> RequestFailed:
        return RequestFailed(
            message.request_id,
            f"{self.node_id} no longer keeps the prefix of {message.reuse_from}",
            retryable=True,
            prefix_miss=True,
        )

    def _count_new_cache(self, wire_id: str, sender: str) -> bool:
        """Count the cache a peer's Forward is about to open; False when the peer
        holds its limit already. This node's own requests are bounded by the API."""
        if sender == self.node_id:
            return True
        if self._caches_per_peer[sender] >= self.settings.max_caches_per_peer:
            return False
        self._caches_per_peer[sender] += 1
        self._opened_by[wire_id] = sender
        return True

    def _uncount(self, wire_id: str) -> None:
        sender = self._opened_by.pop(wire_id, None)
        if sender is not None:
            self._caches_per_peer[sender] -= 1
            if not self._caches_per_peer[sender]:
                del self._caches_per_peer[sender]

    def _refusal(self, message: Forward) -> RequestFailed:
        return RequestFailed(
            message.request_id,
            f"{self.node_id} does not serve plan {message.plan_version} now",
            retryable=True,
        )

    async def _finish(
        self, message: Forward, job: Job, onward: str | None, epoch: int, copy: Job | None = None
    ) -> None:
        """Wait for the step's output and pass it on: the hidden state to `onward`,
        or (on the last shard) the sampled token to the origin. Never raises:
        whatever goes wrong ends this request (at its origin), not the node.
        `copy`: the prefix copy the step builds on (its failure fails the step)."""
        try:
            if copy is not None:
                await copy.wait()
            output = await job.wait()
            self._count_step(message, job.seconds)
            if epoch != self._shard_epoch:  # the shard was replaced while this step ran
                reply: Message = self._refusal(message)
            elif onward is None:
                reply = self._token_result(message, output)
            else:
                # Hidden states are (T, hidden); a batched engine may hand back (hidden,).
                await self.send(onward, replace(message, tensor=np.atleast_2d(output)))
                return
            await self.send(message.origin, reply)
        except (PeerUnavailable, _NoSampler) as exc:
            # Our successor is gone (a newer plan skips it), or the sampler with it
            # (a replay makes a new one): worth another try.
            await self._fail(message, str(exc), retryable=True)
        except BadSamplingError as exc:  # the origin asked for what this node cannot do
            await self._fail(message, str(exc), retryable=False)
        except Exception as exc:  # the engine refused the input: replaying cannot help
            log.exception("step of %s failed", message.request_id)
            await self._fail(message, f"{type(exc).__name__}: {exc}", retryable=False)

    async def _fail(self, message: Forward, reason: str, *, retryable: bool) -> None:
        failure = RequestFailed(message.request_id, reason[:MAX_REASON_LENGTH], retryable)
        await self._send_quietly(message.origin, failure)

    def _count_step(self, message: Forward, seconds: float) -> None:
        self.stats.forwards += 1
        self.stats.compute_seconds += seconds
        self.stats.forwarded_positions += int(message.tensor.shape[0])

    def _token_result(self, message: Forward, logits: np.ndarray) -> TokenResult:
        """The step's token, with its log-probabilities when the step asks for them
        (and its prompt tokens', from every position's logits, when it scores them)."""
        prompt = None
        if message.score is not None and message.logprobs is not None:
            rows, logits = logits, logits[-1]
            prompt = tuple(
                (item.logprob, item.top)
                for item in (
                    token_logprob(row, target, message.logprobs)
                    for row, target in zip(rows, message.score, strict=False)
                )
            )
        token = self._sample(message, logits)
        if message.logprobs is None:
            return TokenResult(message.request_id, token)
        scored = token_logprob(logits, token, message.logprobs)
        return TokenResult(message.request_id, token, scored.logprob, scored.top, prompt)

    def _sample(self, message: Forward, logits: np.ndarray) -> int:
        """The step's token, drawn by the request's sampler: made from the
        parameters its prompt carried, kept until the request is released, so it
        sees every token it produced (a replay makes a new one, and the replayed
        steps draw the generated tokens again). Without penalties or a grammar
        the draw depends only on (params, seed, step); with them, on the tokens
        so far too, which the sampler learns from each step's `tokens` (its
        ValueError or GrammarError fails the request)."""
        sampler = self._samplers.get(message.request_id)
        if sampler is None:
            if message.sampling is None:
                raise _NoSampler(f"{self.node_id} has no sampler for {message.request_id}")
            sampler = self._new_sampler(sampling_from_wire(message.sampling))
            self._samplers[message.request_id] = sampler
        if message.tokens:  # sent exactly when the draw depends on them
            sampler.observe(message.step, message.start_position, message.tokens)
        return sampler.sample(logits, message.step)

    def _new_sampler(self, params: SamplingParams) -> RequestSampler:
        if params.grammar is None:
            return RequestSampler(params)
        if self.constraints is None:
            raise ValueError("this node cannot follow grammars (no tokenizer)")
        return RequestSampler(params, self.constraints.constraint(params.grammar))

    async def _send_quietly(self, node_id: str, message: Message) -> None:
        """Send, or drop it when the node is gone (its requests are gone too)."""
        try:
            await self.send(node_id, message)
        except PeerUnavailable:
            log.debug("dropping %s for %s: unreachable", type(message).__name__, node_id)

    # --- what membership and plan changes do ----------------------------------

    def peer_left(self, node_id: str, reason: str) -> None:
        """Replay this node's requests that ran through the peer, and free the
        caches of requests it originated (nobody will release them now)."""
        self.interrupt(lambda plan: node_id in plan.node_ids, reason)
        for wire_id, served in list(self._served.items()):
            if served.origin == node_id:
                self._release_cache(wire_id)

    def drop_prefixes(self) -> None:
        """A new plan: free every kept cache (they belong to the old one)."""
        self._free_caches(self._kept.drop_all())

    def forget_served(self) -> None:
        """The shard was replaced, and every cache with it."""
        self._shard_epoch += 1
        self._kept.drop_all()
        self._served.clear()
        self._opened_by.clear()
        self._caches_per_peer.clear()
        self._samplers.clear()

    def statistics(self) -> dict[str, Any]:
        return {**self.stats.as_dict(), "prefix_cache": asdict(self._kept.statistics())}


def _sampled(results: list[TokenResult], prompt: list[int] | None) -> SampledToken:
    """The step's token (the last result) as `generate_results` yields it; with
    `prompt`, the prompt's scores from its chunks' results, in order."""
    last = results[-1]
    scored = None
    if last.logprob is not None:
        scored = TokenLogprob(last.token_id, last.logprob, last.top_logprobs or ())
    if prompt is None:
        return SampledToken(last.token_id, scored)
    pairs = [pair for result in results for pair in result.prompt_logprobs or ()]
    prompt_scores = tuple(
        TokenLogprob(token, logprob, top)
        for token, (logprob, top) in zip(prompt[1:], pairs, strict=False)
    )
    return SampledToken(last.token_id, scored, prompt_scores)


class _NoSampler(Exception):
    """The last shard got a later step of a request whose sampler it does not hold."""


def pipeline_batch(requests: int, nodes: int) -> int:
    """Decode steps per batch that split `requests` into one group per ring node."""
    return max(1, math.ceil(requests / max(1, nodes)))
