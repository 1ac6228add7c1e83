"""Which agents answer now, and what to tell the user when one stops answering mid-job.

The registry calls an agent lost only once it has missed its heartbeats for a while (15 s by
default), so a device that has just gone away (unplugged, crashed, off the network) is
still listed as alive. Before a job is planned the driver asks every listed agent's health
service, with a short deadline, and leaves out the ones that do not answer. While the job
runs it keeps asking its agents at the heartbeat interval and restarts the job without one
that has missed as many checks in a row as the registry allows heartbeats (a frozen agent keeps its
connections open: without this the job would hang until TCP keepalives gave up). When a
call fails in the middle of a job, the same question names the agent that went away,
instead of a bare gRPC status.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.jobs import JobState, Progress

# A busy agent answers its health check from its event loop while it computes in threads;
# give it at least this long.
HEALTH_TIMEOUT_S = 2.0


async def silent_agents(
    channels: dict[str, grpc.aio.Channel],
    metadata: tuple[tuple[str, str], ...],
    timeout_s: float = HEALTH_TIMEOUT_S,
) -> dict[str, str]:
    """The agents that do not answer their health check as SERVING within ``timeout_s``
    (all asked at once), each with why: ``{name: reason}``."""

    async def ask(channel: grpc.aio.Channel) -> str:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(), metadata=metadata, timeout=timeout_s
            )
        except grpc.aio.AioRpcError as error:
            return f"{error.code().name}: {error.details()}"
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return ""

    names = list(channels)
    reasons = await asyncio.gather(*(ask(channels[name]) for name in names))
    return {name: reason for name, reason in zip(names, reasons, strict=True) if reason}


@dataclass
class JobPosition:
    """Where a job is, followed from its progress reports (which leave out what did not
    change), for error messages: ``"in epoch 3, step 16"``."""

    state: JobState | None = None
    epoch: int = 0
    step: int = 0

    def follow(self, update: Progress) -> None:
        self.state = update.state or self.state
        self.epoch = update.epoch if update.epoch is not None else self.epoch
        self.step = update.step if update.step is not None else self.step

    def __str__(self) -> str:
        if self.state is None:
            return "before it started"
        if self.state is JobState.TRAINING and self.epoch:
            return f"in epoch {self.epoch}, step {self.step}"
        return f"while {self.state.value}"


async def first_silent(
    channels: dict[str, grpc.aio.Channel],
    metadata: tuple[tuple[str, str], ...],
    interval_s: float,
    misses: int,
) -> dict[str, str]:
    """Ask the agents' health every ``interval_s`` and return, with why, the ones that have
    not answered ``misses`` checks in a row (as the registry's heartbeats would say: an
    agent that is frozen rather than gone keeps its connections open, and a call to it
    would wait for TCP keepalives). A check may take up to its deadline (at least
    ``HEALTH_TIMEOUT_S``); the next one starts on time all the same, so that a frozen agent
    is found about ``misses`` intervals plus one deadline after it froze. Never returns
    while every agent answers."""
    missed = dict.fromkeys(channels, 0)
    deadline = max(interval_s, HEALTH_TIMEOUT_S)
    checks: collections.deque[asyncio.Future[dict[str, str]]] = collections.deque()
    try:
        while True:
            await asyncio.sleep(interval_s)
            checks.append(asyncio.ensure_future(silent_agents(channels, metadata, deadline)))
            while checks and checks[0].done():  # the answers in the order they were asked
                silent = checks.popleft().result()
                for name in missed:
                    missed[name] = missed[name] + 1 if name in silent else 0
                gone = {name: silent[name] for name in silent if missed[name] >= misses}
                if gone:
                    return gone
    finally:
        for check in checks:
            check.cancel()


class AgentsSilent(RuntimeError):
    """Agents of a running job stopped answering: ``silent`` maps each to why."""

    def __init__(self, silent: dict[str, str]) -> None:
        super().__init__(", ".join(sorted(silent)))
        self.silent = silent


def lost_agents(silent: dict[str, str], position: JobPosition) -> str:
    """``"agent(s) agent-2 (why) stopped answering in epoch 3, step 16"``."""
    agents = ", ".join(f"{name} ({reason})" for name, reason in sorted(silent.items()))
    return f"agent(s) {agents} stopped answering {position}"


def silent_failure(silent: dict[str, str], position: JobPosition, restarts: int = 0) -> str:
    """The job's reason when agents stopped answering (``restarts``: after how many
    restarts), and what to do."""
    after = f" after {restarts} restart(s), its max_restarts" if restarts else ""
    return (
        f"{lost_agents(silent, position)}; the job failed{after} and the other agents "
        "dropped it. Resubmit it to train on the agents still alive (pac status lists them)"
    )


def call_failure(error: grpc.aio.AioRpcError, silent: dict[str, str], position: JobPosition) -> str:
    """The job's reason when a call to an agent failed: the agents that stopped answering
    and what to do, or the failed call's status when every agent still answers."""
    if silent:
        return silent_failure(silent, position)
    return (
        f"a call to an agent failed {position}: {error.code().name}: {error.details()} "
        "(the agents' logs say more)"
    )
