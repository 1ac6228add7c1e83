"""How a job is executed: the ``JobDriver`` interface and the table of drivers.

The coordinator runs each job by calling ``driver.run(job, agents, progress, cancelled)``
in its job thread. A driver reports state changes and numbers through ``progress``,
checks ``cancelled`` between steps (and returns early when it is set: the job becomes
CANCELLED), raises to fail the job (the error's text is the job's reason), and returns a
``JobResult`` when it is done. A job's ``spec.placement`` picks the driver by name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from coordinator.jobs import Job, Progress
from coordinator.registry import AgentLiveness, AgentRecord, AgentRegistry
from pac.wire.channel import TransportSecurity

ProgressSink = Callable[[Progress], None]
LiveAgents = list[tuple[AgentRecord, AgentLiveness]]


@dataclass(frozen=True)
class JobResult:
    """What a finished job leaves: final evaluation metrics and where its outputs are."""

    metrics: dict[str, float] = field(default_factory=dict)
    output_dir: str = ""


class JobDriver(Protocol):
    def run(
        self, job: Job, agents: LiveAgents, progress: ProgressSink, cancelled: threading.Event
    ) -> JobResult:
        """Execute ``job`` (its ``output_dir`` is set and exists) on ``agents`` (the live
        ones when the job starts)."""
        ...


@dataclass(frozen=True)
class DriverContext:
    """What a driver may need besides the job: how to reach the planner and the agents
    (the mesh's join token and transport security), and the coordinator's state dir."""

    state_dir: Path = Path(".")
    join_token: str | None = None
    security: TransportSecurity | None = None
    planner_address: str = ""
    # How often a running mesh job checks its agents, and how many checks in a row one may
    # miss before the job fails: the registry's heartbeat interval and missed heartbeats.
    agent_check_interval_s: float = 2.0
    agent_check_misses: int = 3
    # The agent registry, for a job that a coordinator restart interrupted: it waits up to
    # ``resume_wait_s`` for the agents that ran it to register again before it resumes.
    registry: AgentRegistry | None = None
    resume_wait_s: float = 60.0
    # An agent answers a job's profiling with its profile of the same model and shapes when
    # it is at most this old (agent/profile_memo.py); 0 = always measure.
    profile_max_age_s: float = 3600.0


def default_drivers(context: DriverContext | None = None) -> dict[str, JobDriver]:
    """Placement name -> driver. The mesh driver plugs in here with one line, e.g.
    ``"mesh": MeshDriver(context)``."""
    from coordinator.drivers.local import LocalDriver
    from coordinator.drivers.mesh import MeshDriver

    return {
        "local": LocalDriver(),
        "mesh": MeshDriver(context),
    }
