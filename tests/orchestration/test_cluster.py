"""In-process rings: real clusters (QUIC on loopback, manual peers file, trust
stores, plan agreement) around MLX engines holding a tiny random model.

Fast enough for every run; the multi-process tests in test_ring.py do the same
with the real model and `exoquic up`.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from exoquic.engines.base import Engine
from exoquic.engines.mlx.engine import MLXEngine
from exoquic.engines.sampling import SamplingParams
from exoquic.identity.keys import Identity
from exoquic.identity.trust import TrustStore
from exoquic.models.config import ModelConfig
from exoquic.models.shard import Shard
from exoquic.models.weights import EMBED_NAME, HEAD_NAME, ShardWeights, shard_tensor_names
from exoquic.orchestration.cluster import Cluster, ClusterSettings, open_cluster
from exoquic.orchestration.generation import UnavailableError
from exoquic.orchestration.planning import Member, PlanState
from exoquic.orchestration.plans import ShardLoader
from exoquic.orchestration.ring import RingSettings, StepFailedError
from exoquic.orchestration.worker import EngineWorker
from exoquic.topology import DeviceCapabilities, ModelRequirements
from exoquic.transport import ConnectionClosed, MessageStream, open_endpoint
from exoquic.wire.errors import ErrorCode
from exoquic.wire.messages import PROTOCOL_VERSION, Hello, Message, PlanProposal

MODEL_ID = "tiny"
CONFIG = ModelConfig(
    architecture="llama", vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=6,
    num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0, rms_norm_eps=1e-5,
    max_context=256, tie_word_embeddings=True,
)  # fmt: skip
MIB = 1 << 20
# Two nodes of 100 MiB hold it (6 layers of 10 MiB, 20 MiB embedding and head), one does not.
REQUIREMENTS = ModelRequirements(MODEL_ID, 6, 10 * MIB, 40 * MIB, 40 * MIB)
PROMPTS = [[1, 2, 3, 4, 5], [9, 8, 7], [42], [5, 5, 5, 5, 5, 5, 5, 5]]
GREEDY = SamplingParams()


ROWS = {"q_proj": 64, "k_proj": 32, "v_proj": 32, "o_proj": 64, "gate_proj": 128,
        "up_proj": 128, "down_proj": 64}  # fmt: skip


def whole_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for name in shard_tensor_names(Shard.whole(MODEL_ID, CONFIG.num_layers)):
        if name.endswith("norm.weight"):
            tensors[name] = np.ones(CONFIG.hidden_size, np.float32)
        elif name == HEAD_NAME:
            tensors[name] = tensors[EMBED_NAME]
        else:
            rows = ROWS.get(name.split(".")[-2], CONFIG.vocab_size)
            cols = 128 if "down_proj" in name else 64
            scale = 3.0 if name == EMBED_NAME else 1 / np.sqrt(cols)
            tensors[name] = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    return tensors


TENSORS = whole_weights()


def load_shard(shard: Shard) -> ShardWeights:
    names = shard_tensor_names(shard)
    return ShardWeights(CONFIG, shard, {n: TENSORS[n] for n in names})


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Lab:
    """Homes, keys, trust and peers files for a few in-process nodes."""

    def __init__(
        self,
        root: Path,
        names: list[str],
        engine: Callable[[], Engine] | None = None,
        loader: ShardLoader = load_shard,
        peer_timeout: float = 1.0,
    ) -> None:
        self.engine = engine or (lambda: MLXEngine(max_context=CONFIG.max_context))
        self.loader = loader
        self.peer_timeout = peer_timeout  # longer for engines that hold the GIL while tracing
        self.identities = {name: Identity.generate() for name in names}
        self.ports = {name: free_udp_port() for name in names}
        self.homes = {name: root / name for name in names}
        for name, home in self.homes.items():
            home.mkdir()
            trust = TrustStore.open(home)
            peers = []
            for other, identity in self.identities.items():
                if other != name:
                    trust.add(identity.public_key, other)
                    peers.append({"id": identity.node_id, "host": "127.0.0.1",
                                  "port": self.ports[other]})  # fmt: skip
            (home / "peers.json").write_text(json.dumps({"peers": peers}))

    @asynccontextmanager
    async def node(
        self,
        name: str,
        memory_mib: int = 1000,
        port: int | None = None,
        loader: ShardLoader | None = None,
        ring: RingSettings | None = None,
    ) -> AsyncIterator[Cluster]:
        home = self.homes[name]
        settings = ClusterSettings(
            identity=self.identities[name],
            trust=TrustStore.open(home),
            name=name,
            host="127.0.0.1",
            port=port or self.ports[name],
            discovery=("manual",),
            peers_file=home / "peers.json",
            peer_timeout=self.peer_timeout,
            join_timeout=3.0,
            settle_time=0.05,
            plan_timeout=20.0,
            ring_settings=ring or RingSettings(step_timeout=20.0),
        )
        engine = self.engine()
        caps = DeviceCapabilities(memory_mib * MIB, memory_mib * MIB, "test", engine.name)
        state = PlanState(Member(settings.identity.node_id, name, caps), REQUIREMENTS, 1.0)
        worker = EngineWorker(engine)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            loader = loader or self.loader
            async with open_cluster(settings, state, worker, loader) as cluster:
                yield cluster
            nursery.cancel_scope.cancel()


def hello(me: Identity, device: dict[str, Any]) -> Hello:
    """The Hello of peer "x" (`me`) of the test model, describing `device`."""
    return Hello(PROTOCOL_VERSION, me.node_id, "x", 1, MODEL_ID, None, device)


async def generate(
    cluster: Cluster,
    prompt: list[int],
    max_tokens: int = 12,
    on_token: Callable[[int], object] | None = None,
    sampling: SamplingParams = GREEDY,
) -> list[int]:
    tokens = []
    request_id = f"req-{len(prompt)}-{prompt[0]}-{trio.current_time():.6f}"
    generator = cluster.ring.generate_tokens(request_id, prompt, sampling, max_tokens)
    async with aclosing(generator):
        async for token in generator:
            tokens.append(token)
            if on_token is not None:
                await on_token(len(tokens))  # type: ignore[misc]
    return tokens


async def wait_plan(clusters: list[Cluster], size: int, timeout: float = 20) -> None:
    with trio.move_on_after(timeout):
        while True:
            plans = [c.plans.state.active_plan() for c in clusters]
            sizes = {len(p.node_ids) if p else 0 for p in plans}
            if sizes == {size} and len({p.version for p in plans if p is not None}) == 1:
                return
            await trio.sleep(0.05)
    states = [(c.plans.state, c.status()) for c in clusters]
    views = [(s.me.name, status, s.adopted_key, s.loaded_key,
              sorted(m.name for m in s.peers.values())) for s, status in states]  # fmt: skip
    raise AssertionError(f"no common {size}-node plan: {views}")


async def wait_until(condition: Callable[[], bool], timeout: float = 5) -> None:
    """Poll until `condition()` holds (real QUIC between in-process nodes: real time)."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


@pytest.fixture(scope="module")
def reference() -> dict[tuple[int, ...], list[int]]:
    """Greedy tokens of each prompt from the whole model on one engine, no ring."""
    engine = MLXEngine(max_context=CONFIG.max_context)
    engine.load(load_shard(Shard.whole(MODEL_ID, CONFIG.num_layers)))
    out = {}
    for i, prompt in enumerate(PROMPTS):
        tokens, inputs = [], np.asarray(prompt, np.int32)
        for _ in range(20):
            token = int(np.argmax(engine.forward(f"r{i}", inputs)))
            tokens.append(token)
            inputs = np.asarray([token], np.int32)
        out[tuple(prompt)] = tokens
    return out


async def test_a_ring_of_three_answers_like_one_engine(
    tmp_path: Path, reference: dict[tuple[int, ...], list[int]]
) -> None:
    lab = Lab(tmp_path, ["a", "b", "c"])
    async with AsyncExitStack() as stack:
        clusters = [await stack.enter_async_context(lab.node(n)) for n in ("a", "b", "c")]
        await wait_plan(clusters, 3)
        for origin, prompt in zip(clusters + clusters, PROMPTS, strict=False):
            assert await generate(origin, prompt) == reference[tuple(prompt)][:12]
        # every request released its caches on every node
        await wait_until(lambda: all(c.worker.engine.active_requests() == 0 for c in clusters))


async def test_a_long_prompt_pipelined_in_chunks_answers_like_one_engine(tmp_path: Path) -> None:
    """A prompt of several prefill chunks leaves the origin chunk by chunk (see
    `Ring`); each node runs them in order, and the last chunk's token starts the
    answer, as one engine running the whole prompt at once would."""
    prompt = [int(t) for t in np.random.default_rng(7).integers(1, CONFIG.vocab_size, 200)]
    engine = MLXEngine(max_context=CONFIG.max_context)
    engine.load(load_shard(Shard.whole(MODEL_ID, CONFIG.num_layers)))
    expected, inputs = [], np.asarray(prompt, np.int32)
    for _ in range(8):
        expected.append(int(np.argmax(engine.forward("whole", inputs))))
        inputs = np.asarray(expected[-1:], np.int32)
    lab = Lab(tmp_path, ["a", "b", "c"])
    async with AsyncExitStack() as stack:
        clusters = [await stack.enter_async_context(lab.node(n)) for n in ("a", "b", "c")]
        await wait_plan(clusters, 3)
        assert await generate(clusters[1], prompt, max_tokens=8) == expected
        # every node ran the prompt as two chunks (128 + 72), then 7 decode steps
        assert [c.ring.stats.forwards for c in clusters] == [2 + 7] * 3


async def test_concurrent_requests_each_match_their_solo_run(
    tmp_path: Path, reference: dict[tuple[int, ...], list[int]]
) -> None:
    lab = Lab(tmp_path, ["a", "b"])
    async with lab.node("a") as a, lab.node("b") as b:
        await wait_plan([a, b], 2)
        results: dict[int, list[int]] = {}

        async def one(i: int) -> None:
            prompt = PROMPTS[i % len(PROMPTS)]
            results[i] = await generate((a, b)[i % 2], prompt)

        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(one, i)
        for i, tokens in results.items():
            assert tokens == reference[tuple(PROMPTS[i % len(PROMPTS)])][:12], i
        batches = [c.worker.statistics().largest_batch for c in (a, b)]
        assert max(batches) > 1  # decode steps rode together...
        assert max(batches) <= 4  # ...in one group per node (see `pipeline_batch`)


async def test_requests_stopped_early_leave_no_cache_behind(
    tmp_path: Path, reference: dict[tuple[int, ...], list[int]]
) -> None:
    """The origin starts the next step before handing a token out, so a caller that
    stops leaves a step in flight; its release may reach a node before that step
    does, and the step must then not make a cache that nobody would free."""
    lab = Lab(tmp_path, ["a", "b", "c"])
    async with AsyncExitStack() as stack:
        clusters = [await stack.enter_async_context(lab.node(n)) for n in ("a", "b", "c")]
        await wait_plan(clusters, 3)
        for i in range(12):
            prompt = PROMPTS[i % len(PROMPTS)]
            generator = clusters[i % 3].ring.generate_tokens(f"stop-{i}", prompt, GREEDY, 12)
            first: list[int] = []
            async with aclosing(generator):
                async for token in generator:
                    first.append(token)
                    if len(first) == 1 + i % 3:
                        break
            assert first == reference[tuple(prompt)][: len(first)]
        await wait_until(lambda: not any(c.worker.engine.active_requests() for c in clusters))


async def test_a_node_leaving_mid_request_is_replayed_with_the_same_output(
    tmp_path: Path, reference: dict[tuple[int, ...], list[int]]
) -> None:
    lab = Lab(tmp_path, ["a", "b", "c"])
    prompt = PROMPTS[0]
    async with lab.node("a") as a, lab.node("b") as b, trio.open_nursery() as nursery:
        c, stop_c = await nursery.start(serve, lab, "c", 1000)
        await wait_plan([a, b, c], 3)

        async def leave_after(count: int) -> None:
            if count == 4:
                stop_c.cancel()  # c closes its connections on the way out
                await wait_until(lambda: c.node_id not in a.peers.live_peers())

        tokens = await generate(a, prompt, 16, on_token=leave_after)
        assert tokens == reference[tuple(prompt)][:16]
        assert a.ring.stats.replays >= 1
        plan = a.plans.state.active_plan()
        assert plan is not None and len(plan.node_ids) == 2


async def test_a_node_joining_mid_request_is_taken_in_without_changing_the_output(
    tmp_path: Path, reference: dict[tuple[int, ...], list[int]]
) -> None:
    lab = Lab(tmp_path, ["a", "b", "c"])
    prompt = PROMPTS[3]
    async with lab.node("a") as a, lab.node("b") as b, trio.open_nursery() as nursery:
        await wait_plan([a, b], 2)
        joined: list[Cluster] = []

        async def join_after(count: int) -> None:
            if count == 3:
                c, _ = await nursery.start(serve, lab, "c", 1000)
                joined.append(c)
                state = a.plans.state  # hold the request until the new plan is adopted
                with trio.fail_after(10):
                    while state.adopted is None or len(state.adopted.plan.node_ids) < 3:
                        await trio.sleep(0.02)

        tokens = await generate(a, prompt, 16, on_token=join_after)
        assert tokens == reference[tuple(prompt)][:16]
        assert a.ring.stats.replays == 1  # the request moved to the new plan
        await wait_plan([a, b, *joined], 3)
        assert await generate(joined[0], PROMPTS[1]) == reference[tuple(PROMPTS[1])][:12]
        nursery.cancel_scope.cancel()


async def test_a_node_back_before_its_old_links_time_out_replaces_them(
    tmp_path: Path, reference: dict[tuple[int, ...], list[int]]
) -> None:
    lab = Lab(tmp_path, ["a", "b", "c"])
    async with lab.node("a") as a, lab.node("c") as c, trio.open_nursery() as nursery:
        old_b, _ = await nursery.start(serve, lab, "b", 1000)
        await wait_plan([a, old_b, c], 3)
        before = a.plans.state.active_plan()
        assert before is not None
        # b comes back (same key) while its old links still look alive, as when a
        # crashed node restarts within its peers' idle timeout
        new_b, _ = await nursery.start(serve, lab, "b", 1000, free_udp_port())
        await wait_plan([a, new_b, c], 3)
        after = a.plans.state.active_plan()
        assert after is not None and after.version > before.version
        assert await generate(a, PROMPTS[0]) == reference[tuple(PROMPTS[0])][:12]
        assert await generate(new_b, PROMPTS[1]) == reference[tuple(PROMPTS[1])][:12]
        nursery.cancel_scope.cancel()


async def test_survivors_that_cannot_hold_the_model_fail_requests_clearly(tmp_path: Path) -> None:
    lab = Lab(tmp_path, ["a", "b"])
    async with lab.node("a", memory_mib=100) as a, trio.open_nursery() as nursery:
        b, stop_b = await nursery.start(serve, lab, "b", 100)
        await wait_plan([a, b], 2)

        async def leave_after(count: int) -> None:
            if count == 2:
                stop_b.cancel()
                await wait_until(lambda: b.node_id not in a.peers.live_peers())

        with trio.fail_after(15), pytest.raises(UnavailableError, match="not enough memory"):
            await generate(a, PROMPTS[0], 16, on_token=leave_after)
        with trio.fail_after(5), pytest.raises(UnavailableError, match="not enough memory"):
            await generate(a, PROMPTS[1])
        assert a.status() == "unavailable"


async def serve(
    lab: Lab,
    name: str,
    memory_mib: int,
    port: int | None = None,
    *,
    task_status: trio.TaskStatus[tuple[Cluster, trio.CancelScope]],
) -> None:
    """Run one node until its cancel scope (handed out at start) is cancelled."""
    with trio.CancelScope() as scope:
        async with lab.node(name, memory_mib, port) as cluster:
            task_status.started((cluster, scope))
            await trio.sleep_forever()


async def test_a_step_an_engine_refuses_fails_the_request_not_the_ring(
    tmp_path: Path, reference: dict[tuple[int, ...], list[int]]
) -> None:
    lab = Lab(tmp_path, ["a", "b"])
    async with lab.node("a") as a, lab.node("b") as b:
        await wait_plan([a, b], 2)
        for origin in (a, b):
            with trio.fail_after(10), pytest.raises(StepFailedError, match="out of range"):
                await generate(origin, [1, CONFIG.vocab_size + 5])
        assert await generate(b, PROMPTS[0]) == reference[tuple(PROMPTS[0])][:12]


async def test_a_peer_breaking_the_protocol_is_dropped_and_the_ring_goes_on(
    tmp_path: Path, reference: dict[tuple[int, ...], list[int]]
) -> None:
    lab = Lab(tmp_path, ["a", "b", "x"])  # x: a trusted peer that misbehaves
    x = lab.identities["x"]
    good_device = DeviceCapabilities(MIB, MIB, "x", "mlx").to_dict()
    bad_plan = PlanProposal({"version": 9, "assignments": [{"node_id": x.node_id}]})
    async with lab.node("a") as a, lab.node("b") as b:
        await wait_plan([a, b], 2)
        for device, then in (({"total_memory": 1}, None), (good_device, bad_plan)):
            closed = await misbehave(lab, x, "a", device, then)
            assert closed.error_code == ErrorCode.INVALID_FIELD
        assert await generate(a, PROMPTS[2]) == reference[tuple(PROMPTS[2])][:12]
        assert a.plans.state.active_plan() is not None and len(a.plans.state.peers) == 1


async def misbehave(
    lab: Lab, me: Identity, to: str, device: dict[str, Any], then: Message | None
) -> ConnectionClosed:
    """Link to node `to` as `me` with `device`, send `then`; how the link closed."""
    trust = TrustStore.open(lab.homes["x"])
    async with open_endpoint(me, verify_peer=trust.is_trusted, host="127.0.0.1") as endpoint:
        peer_key = lab.identities[to].public_key
        connection = await endpoint.connect(("127.0.0.1", lab.ports[to]), peer_key)
        messages = await MessageStream.open(connection)
        await messages.send_message(hello(me, device))
        if then is not None:
            await messages.receive_message()  # their hello
            await messages.send_message(then)
        with trio.fail_after(5):
            return await connection.wait_closed()
