"""The job RPCs over loopback: refusals with clear codes, WatchJob streaming to DONE."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace

import grpc

from coordinator.coordinator_grpc import serve_coordinator
from coordinator.core import Coordinator
from coordinator.job_messages import spec_to_proto
from coordinator.jobs import JobSpec
from pac.wire.auth import token_metadata
from pac.wire.channel import TransportSecurity, open_channel
from protos.v1 import coordinator_pb2 as pb
from protos.v1 import coordinator_pb2_grpc as pb_grpc

TOKEN = "grpc-test-token"
AUTH = token_metadata(TOKEN)
PLAINTEXT = TransportSecurity(insecure=True)


async def code_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_job_rpcs_refuse_watch_and_list(make_coordinator: Callable[..., Coordinator],
                                        spec: JobSpec) -> None:
    coordinator = make_coordinator()

    async def scenario() -> None:
        server, port = await serve_coordinator(coordinator, "127.0.0.1:0", TOKEN, PLAINTEXT)
        channel = open_channel(f"127.0.0.1:{port}", PLAINTEXT)
        stub = pb_grpc.CoordinatorStub(channel)
        try:
            # Malformed: each answered INVALID_ARGUMENT with the field and what to do.
            for change, words in (
                ({"model_dir": "/nowhere"}, "model_dir: /nowhere is not a directory"),
                ({"technique": "prefix"}, "technique: unknown technique 'prefix'"),
                ({"batch_size": 1, "micro_batches": 2},
                 "batch_size: 1 is smaller than the micro-batch count 2"),
            ):
                bad = spec_to_proto(replace(spec, **change))
                try:
                    await stub.SubmitJob(pb.SubmitJobRequest(spec=bad), metadata=AUTH)
                    raise AssertionError(f"{change} was accepted")
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert words in (error.details() or "")
            no_model = spec_to_proto(spec)
            no_model.model_dir = ""
            assert await code_of(stub.SubmitJob(pb.SubmitJobRequest(spec=no_model),
                                                metadata=AUTH)) == grpc.StatusCode.INVALID_ARGUMENT
            assert await code_of(stub.GetJob(pb.GetJobRequest(job_id="nope"), metadata=AUTH)
                                 ) == grpc.StatusCode.NOT_FOUND
            assert await code_of(stub.CancelJob(pb.CancelJobRequest(job_id="nope"),
                                                metadata=AUTH)) == grpc.StatusCode.NOT_FOUND
            assert await code_of(stub.SubmitJob(pb.SubmitJobRequest(spec=spec_to_proto(spec)))
                                 ) == grpc.StatusCode.UNAUTHENTICATED
            try:
                [_ async for _ in stub.WatchJob(pb.WatchJobRequest(job_id="nope"),
                                                metadata=AUTH)]
                raise AssertionError("watching an unknown job succeeded")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND

            job = await stub.SubmitJob(pb.SubmitJobRequest(spec=spec_to_proto(spec)),
                                       metadata=AUTH)
            events = [event async for event in stub.WatchJob(
                pb.WatchJobRequest(job_id=job.job_id), metadata=AUTH, timeout=120)]
            assert events[-1].state == pb.JOB_STATE_DONE
            states = [event.state for event in events]
            assert pb.JOB_STATE_TRAINING in states
            steps = [e.step for e in events if e.state == pb.JOB_STATE_TRAINING]
            assert steps == sorted(steps) and max(steps) == 8
            assert any(e.samples_per_second > 0 and e.loss > 0 for e in events)
            assert events[-1].total_steps == 8 and "accuracy" in events[-1].metrics
            listed = await pb_grpc.JobListStub(channel).ListJobs(pb.ListJobsRequest(),
                                                                 metadata=AUTH)
            assert [j.job_id for j in listed.jobs] == [job.job_id]
            got = await stub.GetJob(pb.GetJobRequest(job_id=job.job_id), metadata=AUTH)
            assert got.state == pb.JOB_STATE_DONE and got.spec.model_dir == spec.model_dir
        finally:
            await channel.close()
            await server.stop(None)

    asyncio.run(scenario())
