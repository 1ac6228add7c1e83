"""PAC mesh planner: stages, device groups and the 1F1B schedule from profiles.

Importable as a library with no torch and no model code: profiles in, plan out.
"""

from planner.api import plan
from planner.errors import PlanInfeasible
from planner.plan import Action, DeviceGroup, Instruction, Plan, Stage, format_plan
from planner.profiles import (
    Cluster,
    DeviceProfile,
    LayerProfile,
    LinkProfile,
    ModelProfile,
    Network,
    Technique,
)

__all__ = [
    "Action",
    "Cluster",
    "DeviceGroup",
    "DeviceProfile",
    "Instruction",
    "LayerProfile",
    "LinkProfile",
    "ModelProfile",
    "Network",
    "Plan",
    "PlanInfeasible",
    "Stage",
    "Technique",
    "format_plan",
    "plan",
]
