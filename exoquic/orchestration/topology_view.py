"""The cluster as `GET /v1/topology` shows it (plain JSON-ready data)."""

from __future__ import annotations

from typing import Any

from exoquic.orchestration.cluster import Cluster
from exoquic.orchestration.planning import Member
from exoquic.topology import Plan


def topology_report(cluster: Cluster, model_id: str, num_layers: int) -> dict[str, Any]:
    """Nodes (this one and its live peers, plus any node of the plan), their
    memory, engine and layer ranges, the plan version and this node's stats.

    `plan_version` is the plan this node adopted (`status` says whether it
    serves yet: "serving", "loading", "forming" or "unavailable" with `reason`).
    """
    state = cluster.state
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
        "nodes": [_node(cluster, node_id, members.get(node_id), plan) for node_id in node_ids],
        "stats": cluster.statistics(),
    }


def _node(
    cluster: Cluster, node_id: str, member: Member | None, plan: Plan | None
) -> dict[str, Any]:
    shard = plan.shard_of(node_id) if plan is not None else None
    me = node_id == cluster.node_id
    entry: dict[str, Any] = {
        "id": node_id,
        "name": member.name if member else None,
        "self": me,
        "live": member is not None,
        "address": None if me else cluster.peer_address(node_id),
        "engine": member.capabilities.engine if member else None,
        "chip": member.capabilities.chip if member else None,
        "memory": _memory(member),
        "layers": [shard.start_layer, shard.end_layer] if shard is not None else None,
    }
    return entry


def _memory(member: Member | None) -> dict[str, int] | None:
    if member is None:
        return None
    caps = member.capabilities
    return {
        "total": caps.total_memory,
        "available": caps.available_memory,
        "usable": caps.usable_memory,
    }
