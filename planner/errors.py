"""Why a plan could not be made."""

from __future__ import annotations

GIB = float(1 << 30)


class PlanInfeasible(ValueError):
    """No plan fits the cluster: the message names the device, the stage and what helps."""


def gib(num_bytes: float) -> str:
    """``4.4 GiB`` (or ``310 MiB`` under 1 GiB) for a byte count."""
    if abs(num_bytes) < GIB:
        return f"{num_bytes / (1 << 20):.0f} MiB"
    return f"{num_bytes / GIB:.1f} GiB"
