"""The coordinator's agent registry: who is in the mesh, and who is still alive.

A plain object (no gRPC): ``register`` gives an agent an id, ``heartbeat`` refreshes it,
``agents`` lists them with liveness computed from the last heartbeat. An agent silent for
``liveness_timeout_s`` is LOST (kept in the list so that the jobs that used it can be
failed over; a heartbeat or a new registration brings it back). The registry lives in
memory: after a restart agents find their ids unknown (heartbeat -> NOT_FOUND) and
register again, which rebuilds it within one heartbeat interval.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum


class AgentLiveness(Enum):
    ALIVE = "alive"
    LOST = "lost"
    DRAINING = "draining"


@dataclass(frozen=True)
class AgentRecord:
    """One registered agent. ``profile`` is its DeviceProfile as sent (opaque here)."""

    agent_id: str
    name: str
    address: str
    profile: bytes
    registered_at: float
    last_heartbeat: float
    job_id: str = ""
    step: int = 0
    draining: bool = False


class UnknownAgent(KeyError):
    """A heartbeat from an id this registry never gave (or gave before a restart)."""


class AgentRegistry:
    """Registered agents by id. ``clock`` is injectable so that tests need not sleep."""

    def __init__(
        self,
        heartbeat_interval_s: float = 5.0,
        missed_heartbeats: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.heartbeat_interval_s = heartbeat_interval_s
        self.liveness_timeout_s = heartbeat_interval_s * missed_heartbeats
        self.instance = uuid.uuid4().hex[:12]
        self._clock = clock
        self._agents: dict[str, AgentRecord] = {}

    def register(self, name: str, address: str, profile: bytes = b"") -> AgentRecord:
        """Add an agent, replacing any earlier record with the same name (it restarted)."""
        if not name:
            raise ValueError("an agent needs a name (pac agent --name jetson-1)")
        if not address:
            raise ValueError(f"agent {name!r} sent no address where peers can reach it")
        for agent_id, record in list(self._agents.items()):
            if record.name == name:
                del self._agents[agent_id]
        now = self._clock()
        record = AgentRecord(uuid.uuid4().hex, name, address, profile, now, now)
        self._agents[record.agent_id] = record
        return record

    def heartbeat(
        self, agent_id: str, job_id: str = "", step: int = 0, draining: bool = False
    ) -> AgentRecord:
        """Refresh an agent's liveness; UnknownAgent if the id is not registered."""
        record = self._agents.get(agent_id)
        if record is None:
            raise UnknownAgent(agent_id)
        record = replace(
            record, last_heartbeat=self._clock(), job_id=job_id, step=step, draining=draining
        )
        self._agents[agent_id] = record
        return record

    def liveness(self, record: AgentRecord) -> AgentLiveness:
        if self._clock() - record.last_heartbeat > self.liveness_timeout_s:
            return AgentLiveness.LOST
        return AgentLiveness.DRAINING if record.draining else AgentLiveness.ALIVE

    def agents(self, include_lost: bool = False) -> list[tuple[AgentRecord, AgentLiveness]]:
        """Agents by name with their liveness; lost ones only when asked."""
        listed = [(record, self.liveness(record)) for record in self._agents.values()]
        if not include_lost:
            listed = [(r, state) for r, state in listed if state != AgentLiveness.LOST]
        return sorted(listed, key=lambda pair: pair[0].name)
