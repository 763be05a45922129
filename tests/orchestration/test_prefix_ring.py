"""The prefix cache across a ring of in-process nodes over real QUIC: a chat's
next turn starts from the caches its first turn left on every node, runs only
its new positions there, and answers exactly what a cold run answers (greedy
and seeded); a node that evicted the prefix makes the origin send it all."""

from __future__ import annotations

from contextlib import AsyncExitStack, aclosing
from pathlib import Path

import numpy as np
from test_cluster import CONFIG, Lab, wait_plan, wait_until

from exoquic.engines.sampling import SamplingParams
from exoquic.orchestration.cluster import Cluster
from exoquic.orchestration.generation import SampledToken
from exoquic.orchestration.ring import RingSettings
from exoquic.orchestration.worker import PREFILL_CHUNK

RNG = np.random.default_rng(7)
FIRST = [int(t) for t in RNG.integers(1, CONFIG.vocab_size, 150)]  # the first turn's prompt
# The next turn: the history, an answer and a new question (58 more positions).
SECOND = FIRST + [int(t) for t in RNG.integers(1, CONFIG.vocab_size, 58)]
MAX_TOKENS = 10
SAMPLINGS = {"greedy": SamplingParams(), "seeded": SamplingParams(temperature=0.9, seed=5)}
ON = RingSettings(step_timeout=60.0)
OFF = RingSettings(step_timeout=60.0, prefix_cache_bytes=0)


async def answer(
    cluster: Cluster, request_id: str, prompt: list[int], sampling: SamplingParams
) -> list[int]:
    generator = cluster.ring.generate_tokens(request_id, prompt, sampling, MAX_TOKENS)
    async with aclosing(generator):
        return [token async for token in generator]


def positions_run(clusters: list[Cluster]) -> list[int]:
    return [c.worker.engine.positions_run for c in clusters]


async def ring_of(stack: AsyncExitStack, lab: Lab, settings: list[RingSettings]) -> list[Cluster]:
    names = [f"n{i}" for i in range(len(settings))]
    memory = 100 if len(names) > 1 else 1000  # two nodes: each holds half the layers
    clusters = [
        await stack.enter_async_context(lab.node(name, memory_mib=memory, ring=ring))
        for name, ring in zip(names, settings, strict=True)
    ]
    await wait_plan(clusters, len(clusters))
    return clusters


async def cold_answers(tmp_path: Path, nodes: int) -> dict[str, list[int]]:
    """The second turn on a ring without a prefix cache."""
    lab = Lab(tmp_path / "cold", [f"n{i}" for i in range(nodes)])
    async with AsyncExitStack() as stack:
        ring = await ring_of(stack, lab, [OFF] * nodes)
        return {
            name: await answer(ring[0], f"cold-{name}", SECOND, s) for name, s in SAMPLINGS.items()
        }


async def test_second_turn_runs_only_new_positions_and_answers_like_a_cold_run(
    tmp_path: Path,
) -> None:
    (tmp_path / "cold").mkdir()
    (tmp_path / "warm").mkdir()
    want = await cold_answers(tmp_path, 2)
    lab = Lab(tmp_path / "warm", ["n0", "n1"])
    async with AsyncExitStack() as stack:
        ring = await ring_of(stack, lab, [ON, ON])
        origin = ring[0].ring
        for name, sampling in SAMPLINGS.items():
            await answer(ring[0], f"first-{name}", FIRST, sampling)
            before = positions_run(ring)
            got = await answer(ring[0], f"second-{name}", SECOND, sampling)
            assert got == want[name], name
            # The first turn's whole chunks came from the caches: only the rest ran.
            new = len(SECOND) - PREFILL_CHUNK + MAX_TOKENS - 1
            assert [after - b for after, b in zip(positions_run(ring), before, strict=True)] == [
                new,
                new,
            ]
        assert origin.stats.prefix_hits >= 2 and origin.stats.prefix_misses == 0
        for cluster in ring:
            kept = cluster.ring.statistics()["prefix_cache"]
            assert kept["hits"] >= 2 and kept["misses"] == 0 and kept["bytes"] > 0


async def test_an_evicted_prefix_is_sent_again_in_full(tmp_path: Path) -> None:
    """The second node keeps nothing (a budget below one prompt's caches): the
    second turn misses there, and the origin sends the whole prompt again."""
    (tmp_path / "cold").mkdir()
    (tmp_path / "warm").mkdir()
    want = await cold_answers(tmp_path, 2)
    lab = Lab(tmp_path / "warm", ["n0", "n1"])
    tiny = RingSettings(step_timeout=60.0, prefix_cache_bytes=1000)
    async with AsyncExitStack() as stack:
        ring = await ring_of(stack, lab, [ON, tiny])
        await answer(ring[0], "first", FIRST, SAMPLINGS["greedy"])
        assert ring[1].ring.statistics()["prefix_cache"]["entries"] == 0
        assert await answer(ring[0], "second", SECOND, SAMPLINGS["greedy"]) == want["greedy"]
        assert ring[0].ring.stats.prefix_misses == 1
        assert ring[1].ring.statistics()["prefix_cache"]["misses"] == 1
        # Nothing is left behind: the missed attempt's caches were released too.
        await wait_until(lambda: ring[1].worker.engine.active_requests() == 0)


async def test_a_new_plan_drops_every_kept_cache(tmp_path: Path) -> None:
    lab = Lab(tmp_path, ["n0"])
    async with AsyncExitStack() as stack:
        (node,) = await ring_of(stack, lab, [ON])
        await answer(node, "first", FIRST, SAMPLINGS["greedy"])
        await wait_until(lambda: node.worker.engine.active_requests() == 1)  # kept
        node.ring.drop_prefixes()  # what adopting a plan does (plans.PlanLoop._adopt)
        await wait_until(lambda: node.worker.engine.active_requests() == 0)
        assert node.ring.statistics()["prefix_cache"]["entries"] == 0


async def test_a_node_joining_makes_a_new_plan_that_drops_every_kept_cache(
    tmp_path: Path,
) -> None:
    """A real re-plan: a second node joins; the first node's kept caches go, and
    the next turn sends its whole prompt under the new plan."""
    lab = Lab(tmp_path, ["n0", "n1"])
    async with AsyncExitStack() as stack:
        (node,) = await ring_of(stack, lab, [ON])
        first_plan = node.plans.state.active_plan()
        await answer(node, "first", FIRST, SAMPLINGS["greedy"])
        assert node.ring.kept_caches == 1
        joined = await stack.enter_async_context(lab.node("n1", memory_mib=100, ring=ON))
        await wait_plan([node, joined], 2)
        new_plan = node.plans.state.active_plan()
        assert first_plan is not None and new_plan is not None
        assert new_plan.version > first_plan.version
        await wait_until(lambda: node.worker.engine.active_requests() == 0)
        assert node.ring.kept_caches == 0
        hits = node.ring.stats.prefix_hits
        await answer(node, "second", SECOND, SAMPLINGS["greedy"])
        assert node.ring.stats.prefix_hits == hits  # nothing of the old plan was offered


async def test_a_single_node_reuses_its_own_prefix(tmp_path: Path) -> None:
    (tmp_path / "cold").mkdir()
    (tmp_path / "warm").mkdir()
    want = await cold_answers(tmp_path, 1)
    lab = Lab(tmp_path / "warm", ["n0"])
    async with AsyncExitStack() as stack:
        (node,) = await ring_of(stack, lab, [ON])
        await answer(node, "first", FIRST, SAMPLINGS["seeded"])
        before = node.worker.engine.positions_run
        assert await answer(node, "second", SECOND, SAMPLINGS["seeded"]) == want["seeded"]
        assert (
            node.worker.engine.positions_run - before
            == len(SECOND) - PREFILL_CHUNK + MAX_TOKENS - 1
        )


async def results(
    cluster: Cluster, request_id: str, prompt: list[int], *, score_prompt: bool
) -> list[SampledToken]:
    generator = cluster.ring.generate_results(
        request_id, prompt, SAMPLINGS["greedy"], MAX_TOKENS, logprobs=2, score_prompt=score_prompt
    )
    async with aclosing(generator):
        return [result async for result in generator]


async def test_log_probabilities_with_a_kept_prefix(tmp_path: Path) -> None:
    """A reused prefix gives the same tokens' log-probabilities as a cold run; a
    request that scores its prompt runs every position (each needs its logits)."""
    (tmp_path / "cold").mkdir()
    (tmp_path / "warm").mkdir()
    async with AsyncExitStack() as stack:
        (cold,) = await ring_of(stack, Lab(tmp_path / "cold", ["n0"]), [OFF])
        want = await results(cold, "cold", SECOND, score_prompt=True)
    async with AsyncExitStack() as stack:
        (node,) = await ring_of(stack, Lab(tmp_path / "warm", ["n0"]), [ON])
        await answer(node, "first", FIRST, SAMPLINGS["greedy"])
        before = node.worker.engine.positions_run
        reused = await results(node, "second", SECOND, score_prompt=False)
        assert node.worker.engine.positions_run - before < len(SECOND)
        assert [r.scored for r in reused] == [r.scored for r in want]

        before = node.worker.engine.positions_run
        scored = await results(node, "scored", SECOND, score_prompt=True)
        assert node.worker.engine.positions_run - before == len(SECOND) + MAX_TOKENS - 1
        assert scored[0].prompt == want[0].prompt and len(scored[0].prompt) == len(SECOND) - 1


async def test_penalties_with_a_kept_prefix(tmp_path: Path) -> None:
    """The presence and frequency penalties look at the generated tokens only, so
    their request starts from the kept prefix; the repetition penalty looks at
    every prompt token, which the last shard learns only from the positions it
    runs, so its request runs the whole prompt. Both answer like a cold run."""
    penalised = {
        "presence": SamplingParams(temperature=0.9, seed=5, presence_penalty=1.5,
                                   frequency_penalty=0.5),
        "repetition": SamplingParams(temperature=0.9, seed=5, repetition_penalty=1.5),
    }  # fmt: skip
    (tmp_path / "cold").mkdir()
    (tmp_path / "warm").mkdir()
    async with AsyncExitStack() as stack:
        (cold,) = await ring_of(stack, Lab(tmp_path / "cold", ["n0"]), [OFF])
        want = {n: await answer(cold, f"cold-{n}", SECOND, s) for n, s in penalised.items()}
    async with AsyncExitStack() as stack:
        (node,) = await ring_of(stack, Lab(tmp_path / "warm", ["n0"]), [ON])
        await answer(node, "first", FIRST, SAMPLINGS["greedy"])
        ran = {}
        for name, sampling in penalised.items():
            before = node.worker.engine.positions_run
            assert await answer(node, f"second-{name}", SECOND, sampling) == want[name], name
            ran[name] = node.worker.engine.positions_run - before
    assert ran["presence"] < len(SECOND) + MAX_TOKENS - 1
    assert ran["repetition"] == len(SECOND) + MAX_TOKENS - 1
