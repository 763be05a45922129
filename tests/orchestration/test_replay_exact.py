"""A request replayed after a node leaves computes every position exactly as an
uninterrupted run does: the same logits bit for bit, not just the same tokens.

In-process tinygrad nodes over real QUIC on loopback, on a tiny GGML-quantized
model: tinygrad runs prefill chunks through a float32 GEMM and decode steps through
integer dot products, which agree only up to rounding. A replay that recomputed the
generated tokens as one prefill changed the cache a little, and on the real model a
near-tie later flipped a greedy token (1 answer in ~400 in a kill -9 soak).
"""

from __future__ import annotations

from contextlib import aclosing
from pathlib import Path

import numpy as np
import pytest
import trio
from engines.tiny_model import random_tensors
from test_cluster import CONFIG, GREEDY, Lab, serve, wait_plan

from exoquic.engines.base import ForwardItem
from exoquic.engines.tinygrad.engine import TinygradEngine
from exoquic.models.shard import Shard
from exoquic.models.weights import ShardWeights, shard_tensor_names
from exoquic.orchestration.cluster import Cluster

QUANTIZED = random_tensors(CONFIG, quantized=True, seed=3)
PROMPT = [int(t) for t in np.random.default_rng(11).integers(1, CONFIG.vocab_size, 40)]

Logits = dict[tuple[str, int], list[np.ndarray]]


def load_quantized(shard: Shard) -> ShardWeights:
    return ShardWeights(CONFIG, shard, {n: QUANTIZED[n] for n in shard_tensor_names(shard)})


class RecordingEngine(TinygradEngine):
    """A tinygrad engine that keeps the logits its last shard computes, by request
    (its tries together) and position."""

    def __init__(self, logits: Logits) -> None:
        super().__init__(max_context=CONFIG.max_context)
        self.logits = logits

    def forward_batch(self, items: list[ForwardItem]) -> list[np.ndarray]:
        outputs = super().forward_batch(items)
        if self.shard is not None and self.shard.is_last:
            for item, output in zip(items, outputs, strict=True):
                request = item.request_id.rsplit(".", 1)[0]  # the wire id is <request>.<try>
                key = (request, self.cache_length(item.request_id))
                self.logits.setdefault(key, []).append(output.copy())
        return outputs


async def generate(cluster: Cluster, request_id: str, leave: trio.CancelScope | None) -> list[int]:
    """16 greedy tokens; `leave` (a node's scope) is cancelled after the 5th."""
    tokens: list[int] = []
    generator = cluster.ring.generate_tokens(request_id, PROMPT, GREEDY, 16)
    async with aclosing(generator):
        async for token in generator:
            tokens.append(token)
            if len(tokens) == 5 and leave is not None:
                leave.cancel()
                await trio.sleep(0.3)
    return tokens


@pytest.mark.slow  # tinygrad traces (and on a first run compiles) its steps: ~40 s
async def test_a_replayed_request_computes_every_position_as_before(tmp_path: Path) -> None:
    logits: Logits = {}
    engine = lambda: RecordingEngine(logits)  # noqa: E731
    lab = Lab(tmp_path, ["a", "b", "c"], engine, load_quantized, peer_timeout=10.0)
    async with lab.node("a") as a, lab.node("b") as b, trio.open_nursery() as nursery:
        c, stop_c = await nursery.start(serve, lab, "c", 1000)
        await wait_plan([a, b, c], 3, timeout=120)  # tinygrad traces its steps first
        whole = await generate(a, "whole", None)
        replayed = await generate(a, "replayed", stop_c)
        assert a.ring.stats.replays == 1
        assert a.ring.stats.replay_mismatches == 0
        nursery.cancel_scope.cancel()
    assert replayed == whole
    positions = sorted(p for request, p in logits if request == "replayed")
    assert positions == sorted(p for request, p in logits if request == "whole")
    assert positions[-1] == len(PROMPT) + 15  # the last step's input position + 1
    for position in positions:
        want = logits["whole", position]
        assert len(want) == 1
        for got in logits["replayed", position]:  # the first try's, then the replay's
            np.testing.assert_array_equal(got, want[0], err_msg=f"position {position}")
    # the first try computed positions up to the 5th token's, the replay all again
    assert len(logits["replayed", len(PROMPT) + 1]) == 2
