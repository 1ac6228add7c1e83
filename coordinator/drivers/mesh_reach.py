"""Which agents answer now, and what to tell the user when one stops answering mid-job.

The registry calls an agent lost only once it has missed its heartbeats for a while (15 s by
default), so a device that has just gone away (unplugged, crashed, off the network) is
still listed as alive. Before a job is planned the driver asks every listed agent's health
service, with a short deadline, and leaves out the ones that do not answer. When a call
fails in the middle of a job, the same question names the agent that went away, instead
of a bare gRPC status.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.jobs import JobState, Progress

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


def call_failure(error: grpc.aio.AioRpcError, silent: dict[str, str], position: JobPosition) -> str:
    """The job's reason when a call to an agent failed: the agents that stopped answering
    and what to do, or the failed call's status when every agent still answers."""
    if silent:
        agents = ", ".join(f"{name} ({reason})" for name, reason in sorted(silent.items()))
        return (
            f"agent(s) {agents} stopped answering {position}; the job failed and the other "
            "agents dropped it. Resubmit it to train on the agents still alive (pac status "
            "lists them)"
        )
    return (
        f"a call to an agent failed {position}: {error.code().name}: {error.details()} "
        "(the agents' logs say more)"
    )
