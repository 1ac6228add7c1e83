"""Why a plan could not be made."""

from __future__ import annotations

GIB = float(1 << 30)


class PlanInfeasible(ValueError):
    """No plan fits the cluster: the message names the device, the stage and what helps."""


def gib(num_bytes: float) -> str:
    """``4.4 GiB`` for a byte count, the unit users see on their devices."""
    return f"{num_bytes / GIB:.1f} GiB"
