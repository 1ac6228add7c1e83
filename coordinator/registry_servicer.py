"""The gRPC face of the agent registry: Register, Heartbeat, ListAgents.

Thin: decode the request, call ``AgentRegistry``, encode the answer. The join token is
checked by ``pac.wire.auth.JoinTokenInterceptor`` before a call gets here. The job RPCs of
the Coordinator service answer UNIMPLEMENTED until the job service exists.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc

from coordinator.registry import AgentLiveness, AgentRecord, AgentRegistry, UnknownAgent
from protos.v1 import agent_pb2, coordinator_pb2, coordinator_pb2_grpc

_STATES = {
    AgentLiveness.ALIVE: coordinator_pb2.AGENT_STATE_ALIVE,
    AgentLiveness.LOST: coordinator_pb2.AGENT_STATE_LOST,
    AgentLiveness.DRAINING: coordinator_pb2.AGENT_STATE_DRAINING,
}


def agent_info(record: AgentRecord, liveness: AgentLiveness) -> coordinator_pb2.AgentInfo:
    return coordinator_pb2.AgentInfo(
        agent_id=record.agent_id,
        name=record.name,
        address=record.address,
        profile=agent_pb2.DeviceProfile.FromString(record.profile),
        state=_STATES[liveness],
        registered_unix=record.registered_at,
        last_heartbeat_unix=record.last_heartbeat,
        job_id=record.job_id,
        step=record.step,
    )


class RegistryServicer(coordinator_pb2_grpc.CoordinatorServicer):
    """``ended_jobs(held)``: which of the jobs an agent holds open have ended (a registry
    without jobs knows none)."""

    def __init__(
        self,
        registry: AgentRegistry,
        ended_jobs: Callable[[list[str]], list[str]] = lambda held: [],
    ) -> None:
        self.registry = registry
        self.ended_jobs = ended_jobs

    async def Register(
        self, request: coordinator_pb2.RegisterRequest, context: grpc.aio.ServicerContext
    ) -> coordinator_pb2.RegisterReply:
        try:
            record = self.registry.register(
                request.name, request.address, request.profile.SerializeToString()
            )
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return coordinator_pb2.RegisterReply(
            agent_id=record.agent_id,
            heartbeat_interval_s=self.registry.heartbeat_interval_s,
            coordinator_instance=self.registry.instance,
        )

    async def Heartbeat(
        self, request: coordinator_pb2.HeartbeatRequest, context: grpc.aio.ServicerContext
    ) -> coordinator_pb2.HeartbeatReply:
        try:
            self.registry.heartbeat(
                request.agent_id, request.job_id, request.step, request.draining
            )
        except UnknownAgent:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"agent id {request.agent_id!r} is not registered (the coordinator may have "
                "restarted): register again",
            )
        return coordinator_pb2.HeartbeatReply(
            heartbeat_interval_s=self.registry.heartbeat_interval_s,
            ended_jobs=self.ended_jobs(list(request.open_jobs)) if request.open_jobs else [],
        )

    async def ListAgents(
        self, request: coordinator_pb2.ListAgentsRequest, context: grpc.aio.ServicerContext
    ) -> coordinator_pb2.ListAgentsReply:
        listed = self.registry.agents(include_lost=request.include_lost)
        return coordinator_pb2.ListAgentsReply(
            agents=[agent_info(record, liveness) for record, liveness in listed]
        )

    async def _jobs_not_served(self, context: grpc.aio.ServicerContext) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "this coordinator serves only the agent registry so far"
        )

    async def SubmitJob(
        self, request: coordinator_pb2.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> coordinator_pb2.Job:
        await self._jobs_not_served(context)
        return coordinator_pb2.Job()

    async def GetJob(
        self, request: coordinator_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> coordinator_pb2.Job:
        await self._jobs_not_served(context)
        return coordinator_pb2.Job()

    async def CancelJob(
        self, request: coordinator_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> coordinator_pb2.Job:
        await self._jobs_not_served(context)
        return coordinator_pb2.Job()

    async def WatchJob(
        self, request: coordinator_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[coordinator_pb2.JobProgress]:
        await self._jobs_not_served(context)
        yield coordinator_pb2.JobProgress()  # pragma: no cover - abort raised above
