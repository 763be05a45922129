"""Ring memory-weighted partitioning: which node runs which layers.

Pure: capabilities in, assignments out. The ring runs from the node with the
most usable memory down to the least (ties by node id), and each node gets a
contiguous run of layers proportional to its memory budget, never more than the
budget holds. The first node also holds the token embedding, the last the
output head.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from exoquic.models.shard import Shard
from exoquic.topology.capabilities import DeviceCapabilities

DEFAULT_MEMORY_FRACTION = 0.8
"""Share of a node's usable memory that model weights may take; the rest is
left for the KV cache, activations and the operating system."""


class InsufficientMemoryError(Exception):
    """The nodes together cannot hold the model."""

    def __init__(
        self, model: ModelRequirements, budgets: dict[str, int], memory_fraction: float
    ) -> None:
        self.needed = model.total_bytes
        self.budgets = budgets  # node id -> bytes it may use for weights
        per_node = ", ".join(f"{n}: {_size(b)}" for n, b in budgets.items()) or "no nodes"
        # At least this much more: layers are whole, so each node may also waste part of one.
        self.shortfall = max(0, self.needed - sum(budgets.values()))
        more = f"needs {_size(self.shortfall)} more" if self.shortfall else "needs more room"
        super().__init__(
            f"not enough memory for {model.model_id}: it needs {_size(self.needed)} "
            f"({model.num_layers} layers of {_size(model.bytes_per_layer)}, embedding "
            f"{_size(model.embed_bytes)}, head {_size(model.head_bytes)}) but the nodes "
            f"offer {_size(sum(budgets.values()))} in all, {memory_fraction:.0%} of their "
            f"usable memory ({per_node}); a layer cannot be split across nodes. "
            f"The ring {more}: add a device or use a smaller model"
        )


@dataclass(frozen=True)
class ModelRequirements:
    """How much memory a model's parts take, in bytes.

    embed_bytes are held by the first shard, head_bytes by the last. With tied
    embeddings both hold the embedding matrix: `shared_bytes` of them are the
    same tensor, charged once to a node that is both first and last.
    """

    model_id: str
    num_layers: int
    bytes_per_layer: int
    embed_bytes: int = 0
    head_bytes: int = 0
    shared_bytes: int = 0

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.bytes_per_layer < 1:
            raise ValueError("a model needs at least one layer of at least one byte")
        if self.embed_bytes < 0 or self.head_bytes < 0:
            raise ValueError("embedding and head sizes cannot be negative")
        if not 0 <= self.shared_bytes <= min(self.embed_bytes, self.head_bytes):
            raise ValueError("the shared bytes must be part of both the embedding and the head")

    @property
    def total_bytes(self) -> int:
        """What one node holding the whole model is charged."""
        return self.shard_bytes(0, self.num_layers - 1)

    def shard_bytes(self, start_layer: int, end_layer: int) -> int:
        """What the node holding layers start..end (inclusive) is charged for,
        as `partition` counts it: its layers, plus the embedding if it is
        first and the head if it is last."""
        if not 0 <= start_layer <= end_layer < self.num_layers:
            last = self.num_layers - 1
            raise ValueError(f"layers {start_layer}..{end_layer} are not within 0..{last}")
        layers = (end_layer - start_layer + 1) * self.bytes_per_layer
        embed = self.embed_bytes if start_layer == 0 else 0
        head = self.head_bytes if end_layer == self.num_layers - 1 else 0
        if embed and head:
            head -= self.shared_bytes
        return layers + embed + head


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    capabilities: DeviceCapabilities


@dataclass(frozen=True)
class Assignment:
    node_id: str
    shard: Shard


def partition(
    model: ModelRequirements,
    nodes: list[NodeInfo],
    memory_fraction: float = DEFAULT_MEMORY_FRACTION,
) -> list[Assignment]:
    """Split the model's layers over `nodes`, in ring order.

    Every layer goes to exactly one node, in contiguous runs following the ring;
    every returned node has at least one layer. Nodes that cannot hold a single
    layer, and the smallest nodes when there are more nodes than layers, are
    left out. The result depends only on the set of nodes, not their order.
    Raises InsufficientMemoryError when the model does not fit.
    """
    if not 0 < memory_fraction <= 1:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    budgets = {n.node_id: int(n.capabilities.usable_memory * memory_fraction) for n in nodes}
    if len(budgets) != len(nodes):
        raise ValueError("node ids must be unique")
    ring = sorted(budgets, key=lambda node_id: (-budgets[node_id], node_id))
    members, caps = _members(model, ring, budgets)
    if sum(caps) < model.num_layers:
        raise InsufficientMemoryError(model, {n: budgets[n] for n in ring}, memory_fraction)
    counts = _round(_fair_shares([budgets[n] for n in members], caps, model.num_layers))
    return _assign(model, members, counts)


def _members(
    model: ModelRequirements, ring: list[str], budgets: dict[str, int]
) -> tuple[list[str], list[int]]:
    """The ring's participants and how many layers each can hold at its place.

    A node that cannot hold one layer (plus the embedding if first, the head if
    last) is dropped, the one furthest along the ring first: a smaller node
    then takes its place, which changes who is last.
    """
    ring = list(ring)
    while True:
        members = ring[: model.num_layers]
        caps = [_capacity(model, budgets[n], i, len(members)) for i, n in enumerate(members)]
        unfit = [n for n, cap in zip(members, caps, strict=True) if cap < 1]
        if not unfit:
            return members, caps
        ring.remove(unfit[-1])


def _capacity(model: ModelRequirements, budget: int, position: int, size: int) -> int:
    """Whole layers that fit in `budget` at `position` of a ring of `size` nodes."""
    fixed = (model.embed_bytes if position == 0 else 0) + (
        model.head_bytes if position == size - 1 else 0
    )
    if size == 1:
        fixed -= model.shared_bytes
    return min(model.num_layers, (budget - fixed) // model.bytes_per_layer)


def _fair_shares(weights: list[int], caps: list[int], total: int) -> list[Fraction]:
    """Shares proportional to `weights`, each within 1..cap, summing to `total`.

    Water-filling: give the free nodes proportional shares of what is left; if
    the shares overshoot caps by more than they undershoot the minimum of 1, the
    overshooting nodes are at their caps in the answer, else the undershooting
    ones are at 1. Fix those and repeat. Needs len(weights) <= total <= sum(caps).
    """
    shares: dict[int, Fraction] = {}
    free = list(range(len(weights)))
    while free:
        left = total - sum(shares.values())
        weight = sum(weights[i] for i in free)
        trial = {i: Fraction(left * weights[i], weight) for i in free}  # members' weights > 0
        over = [i for i in free if trial[i] > caps[i]]
        under = [i for i in free if trial[i] < 1]
        if not over and not under:
            shares.update(trial)
            break
        excess = sum(trial[i] - caps[i] for i in over)
        deficit = sum(1 - trial[i] for i in under)
        pinned = over if excess >= deficit else under
        for i in pinned:
            shares[i] = Fraction(caps[i]) if i in over else Fraction(1)
        free = [i for i in free if i not in pinned]
    return [shares[i] for i in range(len(weights))]


def _round(shares: list[Fraction]) -> list[int]:
    """Largest-remainder rounding: floors, plus one for the largest fractions
    (earlier ring position first on ties) until the sum is exact. The shares
    sum to an integer and lie within integer bounds, so the counts do too."""
    counts = [int(s) for s in shares]  # floor: shares are positive
    short = int(sum(shares)) - sum(counts)
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in by_remainder[:short]:
        counts[i] += 1
    return counts


def _assign(model: ModelRequirements, members: list[str], counts: list[int]) -> list[Assignment]:
    assignments = []
    start = 0
    for node_id, count in zip(members, counts, strict=True):
        shard = Shard(model.model_id, start, start + count - 1, model.num_layers)
        assignments.append(Assignment(node_id, shard))
        start += count
    assert start == model.num_layers, "partition must cover every layer"
    return assignments


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.2f} {unit}"
