"""Several models' rings over one network: in-process nodes on real QUIC.

Each node serves its own model ("tiny") in a ring opened by `open_cluster`;
a second model ("tiny2", the same weights under another id) runs in rings of
its own over the same `Network`, as a model loaded on demand does: links
are handed to the ring their Hello names, a node without that ring declines
(or joins through its `join` hook), and `Interest` tells who wants the model.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import trio
from test_cluster import MIB, PROMPTS, REQUIREMENTS, Lab, generate, reference, wait_plan, wait_until

from exoquic.models.shard import Shard
from exoquic.models.weights import ShardWeights
from exoquic.orchestration.cluster import Cluster, open_ring
from exoquic.orchestration.network import Network
from exoquic.orchestration.planning import Member, PlanState
from exoquic.orchestration.worker import EngineWorker
from exoquic.topology import DeviceCapabilities

__all__ = ["reference"]  # the fixture, shared with test_cluster

OTHER = "tiny2"
OTHER_REQUIREMENTS = replace(REQUIREMENTS, model_id=OTHER)


def load_other(shard: Shard) -> ShardWeights:
    from test_cluster import load_shard

    weights = load_shard(replace(shard, model_id="tiny"))
    return replace(weights, shard=shard)


@asynccontextmanager
async def other_ring(lab: Lab, network: Network, *, wanted: bool = True) -> AsyncIterator[Cluster]:
    """`OTHER` in a ring of its own over `network`, as a model loaded on demand."""
    engine = lab.engine()
    caps = DeviceCapabilities(1000 * MIB, 1000 * MIB, "test", engine.name)
    state = PlanState(Member(network.node_id, network.name, caps), OTHER_REQUIREMENTS, 1.0)
    worker = EngineWorker(engine)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        ring = open_ring(network, state, worker, load_other, on_demand=True, wanted=wanted)
        async with ring as cluster:
            yield cluster
        nursery.cancel_scope.cancel()


def network_of(cluster: Cluster) -> Network:
    assert cluster.network is not None
    return cluster.network


async def test_a_second_model_forms_its_own_ring_beside_the_first(
    tmp_path: Path, reference: dict[tuple[int, ...], list[int]]
) -> None:
    lab = Lab(tmp_path, ["a", "b"])
    async with lab.node("a") as a, lab.node("b") as b:
        await wait_plan([a, b], 2)
        async with other_ring(lab, network_of(a)) as a2, other_ring(lab, network_of(b)) as b2:
            await wait_plan([a2, b2], 2)
            for origin, prompt in zip((a2, b2), PROMPTS, strict=False):
                assert await generate(origin, prompt) == reference[tuple(prompt)][:12]
            assert a.plans.state.active_plan() is not None  # the first ring serves on
            assert await generate(a, PROMPTS[2]) == reference[tuple(PROMPTS[2])][:12]
            # every request ran on its own model's engines only
            assert a2.ring.stats.forwards > 0 and b2.ring.stats.forwards > 0
        # b's second ring closed: a's saw it leave, and a alone serves it now
        async with other_ring(lab, network_of(a)) as again:
            await wait_plan([again], 1)
        assert await generate(b, PROMPTS[3]) == reference[tuple(PROMPTS[3])][:12]


async def test_a_node_without_the_model_declines_and_one_with_it_joins(tmp_path: Path) -> None:
    lab = Lab(tmp_path, ["a", "b", "c"])
    joined: list[Cluster] = []
    async with lab.node("a") as a, lab.node("b") as b, lab.node("c") as c:
        await wait_plan([a, b, c], 3)
        async with trio.open_nursery() as nursery:

            async def join(model_id: str) -> bool:
                """b's join hook: open a ring of the model, as a follower."""
                assert model_id == OTHER

                async def hold(task_status: trio.TaskStatus[None]) -> None:
                    async with other_ring(lab, network_of(b), wanted=False) as ring:
                        joined.append(ring)
                        task_status.started()
                        await trio.sleep_forever()

                await nursery.start(hold)
                return True

            async def broken(model_id: str) -> bool:
                raise RuntimeError("a bug in c's join hook")

            network_of(b).join = join
            network_of(c).join = broken  # c declines, and its own ring goes on
            async with other_ring(lab, network_of(a)) as a2:
                await wait_until(lambda: len(joined) == 1)
                await wait_plan([a2, joined[0]], 2)
                assert c.node_id not in a2.plans.state.member_ids()
                assert c.plans.state.active_plan() is not None
                assert a2.peers.live_peers() == [b.node_id]
                # b joined for a: it does not want the model, a does
                demand_a, demand_b = a2.demand, joined[0].demand
                assert demand_a is not None and demand_b is not None
                await wait_until(lambda: demand_b.wanting == {a.node_id})
                assert demand_a.wanting == set()
                await demand_b.tell(True)
                await wait_until(lambda: demand_a.wanting == {b.node_id})
            # a's ring closed: b's demand no longer counts it
            await wait_until(lambda: demand_b.wanting == set())
            nursery.cancel_scope.cancel()
