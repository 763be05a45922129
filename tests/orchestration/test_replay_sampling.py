"""Seeded sampling with penalties, min_p and logit_bias survives a failover: the
replay feeds the sampling node the same tokens, so its per-request sampler is
rebuilt as it was and the rest of the reply is what an uninterrupted run says.
In-process MLX nodes over real QUIC on loopback (see test_cluster)."""

from __future__ import annotations

from pathlib import Path

import trio
from test_cluster import PROMPTS, Lab, generate, serve, wait_plan

from exoquic.engines.sampling import SamplingParams

KNOBS = SamplingParams(
    temperature=0.9,
    seed=21,
    min_p=0.01,
    presence_penalty=2.0,
    frequency_penalty=2.0,
    repetition_penalty=8.0,  # the tiny random model's favourite token is far ahead
    logit_bias=((3, 2.0), (7, -100.0)),
)


async def test_a_failover_mid_request_keeps_the_penalised_seeded_reply(tmp_path: Path) -> None:
    lab = Lab(tmp_path, ["a", "b", "c"])
    prompt = PROMPTS[3]
    async with lab.node("a") as a, lab.node("b") as b, trio.open_nursery() as nursery:
        c, stop_c = await nursery.start(serve, lab, "c", 1000)
        await wait_plan([a, b, c], 3)
        whole = await generate(a, prompt, 16, sampling=KNOBS)
        plain = await generate(a, prompt, 16, sampling=SamplingParams(temperature=0.9, seed=21))

        async def leave_after(count: int) -> None:
            if count == 5:
                stop_c.cancel()
                await trio.sleep(0.3)

        replayed = await generate(a, prompt, 16, on_token=leave_after, sampling=KNOBS)
        assert a.ring.stats.replays >= 1
        assert a.ring.stats.replay_mismatches == 0
        nursery.cancel_scope.cancel()
    assert replayed == whole
    assert len(set(whole)) > len(set(plain))  # the penalties did change the draws
    assert 7 not in whole  # banned by its bias
