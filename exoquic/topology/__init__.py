"""Pure topology: device capabilities -> ring order -> layer ranges -> plans."""

from exoquic.topology.capabilities import DeviceCapabilities
from exoquic.topology.partition import (
    DEFAULT_MEMORY_FRACTION,
    Assignment,
    InsufficientMemoryError,
    ModelRequirements,
    NodeInfo,
    partition,
)
from exoquic.topology.plan import Plan, PlanAgreement, Proposal, plan_for, winner

__all__ = [
    "DEFAULT_MEMORY_FRACTION",
    "Assignment",
    "DeviceCapabilities",
    "InsufficientMemoryError",
    "ModelRequirements",
    "NodeInfo",
    "Plan",
    "PlanAgreement",
    "Proposal",
    "partition",
    "plan_for",
    "winner",
]
