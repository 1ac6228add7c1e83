"""The gRPC face of the jobs: SubmitJob, GetJob, WatchJob, CancelJob.

Thin: decode, call :class:`coordinator.core.Coordinator`, encode. It extends the registry
servicer (Register, Heartbeat, ListAgents) because both halves are one gRPC service,
``pac.v1.Coordinator``. A malformed job is INVALID_ARGUMENT with the validation message;
an unknown job id is NOT_FOUND.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from coordinator.core import Coordinator
from coordinator.job_messages import job_to_proto, progress_to_proto, spec_from_proto
from coordinator.jobs import Job, JobSpecError, UnknownJob
from coordinator.registry_servicer import RegistryServicer
from protos.v1 import coordinator_pb2 as pb
from protos.v1 import coordinator_pb2_grpc as pb_grpc


class CoordinatorServicer(RegistryServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        super().__init__(coordinator.registry, coordinator.ended_jobs)
        self.coordinator = coordinator

    async def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.Job:
        try:
            spec = spec_from_proto(request.spec)
            job = self.coordinator.submit(spec)
        except JobSpecError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed job: {error}")
        return job_to_proto(job)

    async def _job(self, job_id: str, context: grpc.aio.ServicerContext) -> Job:
        try:
            return self.coordinator.get(job_id)
        except UnknownJob as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
            raise  # pragma: no cover - abort raises

    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.Job:
        return job_to_proto(await self._job(request.job_id, context))

    async def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.Job:
        await self._job(request.job_id, context)
        return job_to_proto(self.coordinator.cancel(request.job_id))

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.JobProgress]:
        """The job now, then every change, until it ends."""
        await self._job(request.job_id, context)
        loop = asyncio.get_running_loop()
        changes: asyncio.Queue[Job] = asyncio.Queue()

        def changed(job: Job) -> None:  # called from the job runner's thread
            loop.call_soon_threadsafe(changes.put_nowait, job)

        unsubscribe = self.coordinator.subscribe(request.job_id, changed)
        try:
            job = self.coordinator.get(request.job_id)
            yield progress_to_proto(job)
            while not job.state.terminal:
                job = await changes.get()
                yield progress_to_proto(job)
        finally:
            unsubscribe()


class JobListServicer(pb_grpc.JobListServicer):
    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator

    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsReply:
        return pb.ListJobsReply(jobs=[job_to_proto(job) for job in self.coordinator.jobs()])
