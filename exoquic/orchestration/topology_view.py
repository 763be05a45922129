"""The cluster as `GET /v1/topology` shows it (plain JSON-ready data)."""

from __future__ import annotations

from typing import Any

from exoquic.models.shard import Shard
from exoquic.orchestration.cluster import Cluster
from exoquic.orchestration.planning import Member
from exoquic.topology import ModelRequirements, Plan
from exoquic.wire.messages import ModelProgress


def topology_report(
    cluster: Cluster, model_id: str, num_layers: int, weights: ModelRequirements | None = None
) -> dict[str, Any]:
    """Nodes (this one and its live peers, plus any node of the plan), their
    memory, engine and layer ranges, the plan version and this node's stats,
    and `downloads`: the nodes still preparing their shard (see `_download`).

    `plan_version` is the plan this node adopted (`status` says whether it
    serves yet: "serving", "loading", "forming" or "unavailable" with `reason`).
    With `weights`, each planned node's `memory.model` is its shard's weight
    bytes as the planner counts them.
    """
    state = cluster.plans.state
    adopted = state.adopted
    plan = adopted.plan if adopted is not None else None
    members = {m.node_id: m for m in state.members()}
    order = plan.node_ids if plan is not None else []
    node_ids = order + sorted(set(members) - set(order))
    return {
        "model": model_id,
        "num_layers": num_layers,
        "node_id": cluster.node_id,
        "plan_version": plan.version if plan is not None else None,
        "proposer": adopted.proposer if adopted is not None else None,
        "coordinator": state.coordinator,
        "status": cluster.status(),
        "reason": state.unavailable,
        "nodes": [
            _node(cluster, node_id, members.get(node_id), plan, weights) for node_id in node_ids
        ],
        "downloads": _downloads(cluster, node_ids, members),
        "stats": cluster.statistics(),
    }


def _node(
    cluster: Cluster,
    node_id: str,
    member: Member | None,
    plan: Plan | None,
    weights: ModelRequirements | None,
) -> dict[str, Any]:
    shard = plan.shard_of(node_id) if plan is not None else None
    me = node_id == cluster.node_id
    entry: dict[str, Any] = {
        "id": node_id,
        "name": member.name if member else None,
        "self": me,
        "live": member is not None,
        "address": None if me else cluster.peers.peer_address(node_id),
        "engine": member.capabilities.engine if member else None,
        "chip": member.capabilities.chip if member else None,
        "memory": _memory(member, shard, weights),
        "layers": [shard.start_layer, shard.end_layer] if shard is not None else None,
    }
    return entry


def _memory(
    member: Member | None, shard: Shard | None, weights: ModelRequirements | None
) -> dict[str, int] | None:
    if member is None:
        return None
    caps = member.capabilities
    memory = {
        "total": caps.total_memory,
        "available": caps.available_memory,
        "usable": caps.usable_memory,
    }
    if shard is not None and weights is not None and weights.num_layers == shard.num_layers:
        memory["model"] = weights.shard_bytes(shard.start_layer, shard.end_layer)
    return memory


def _downloads(
    cluster: Cluster, node_ids: list[str], members: dict[str, Member]
) -> list[dict[str, Any]]:
    """One entry per node (in `nodes` order) whose model is not ready yet."""
    states = cluster.preparation_states()
    return [
        _download(node_id, members.get(node_id), states[node_id], node_id == cluster.node_id)
        for node_id in node_ids
        if node_id in states and states[node_id].phase != "ready"
    ]


def _download(
    node_id: str, member: Member | None, progress: ModelProgress, me: bool
) -> dict[str, Any]:
    """`phase` is "downloading", "loading" or "failed" (with `error`); `done` and
    `total` are the bytes of the files this load fetches, over `files_total` files."""
    return {
        "node_id": node_id,
        "node": member.name if member else node_id,
        "self": me,
        "model": progress.model,
        "phase": progress.phase,
        "done": progress.done_bytes,
        "total": progress.total_bytes,
        "files_done": progress.files_done,
        "files_total": progress.files_total,
        "bytes_per_second": progress.bytes_per_second,
        "error": progress.error or None,
    }
