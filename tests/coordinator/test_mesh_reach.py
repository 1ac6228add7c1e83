"""Which agents answer (their gRPC health service), and the job's reason when one stops."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from coordinator.drivers.mesh_reach import (
    JobPosition,
    call_failure,
    first_silent,
    silent_agents,
)
from coordinator.jobs import JobState, Progress
from pac.cluster.local_mesh import free_ports


def test_agents_that_do_not_answer_as_serving_are_named_with_why() -> None:
    async def check() -> dict[str, str]:
        serving, draining = grpc.aio.server(), grpc.aio.server()
        ports = {}
        for name, server, status in (
            ("serving", serving, health_pb2.HealthCheckResponse.SERVING),
            ("draining", draining, health_pb2.HealthCheckResponse.NOT_SERVING),
        ):
            checker = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(checker, server)
            ports[name] = server.add_insecure_port("127.0.0.1:0")
            await server.start()
            await checker.set("", status)
        [closed] = free_ports(1)  # nothing listens there
        channels = {
            "serving": grpc.aio.insecure_channel(f"127.0.0.1:{ports['serving']}"),
            "draining": grpc.aio.insecure_channel(f"127.0.0.1:{ports['draining']}"),
            "gone": grpc.aio.insecure_channel(f"127.0.0.1:{closed}"),
        }
        try:
            return await silent_agents(channels, (), timeout_s=2.0)
        finally:
            for channel in channels.values():
                await channel.close()
            await serving.stop(None)
            await draining.stop(None)

    silent = asyncio.run(check())
    assert set(silent) == {"draining", "gone"}
    assert silent["draining"] == "NOT_SERVING"
    assert silent["gone"].startswith("UNAVAILABLE: ")


def test_the_position_follows_partial_reports() -> None:
    position = JobPosition()
    assert str(position) == "before it started"
    position.follow(Progress(state=JobState.PROFILING))
    assert str(position) == "while profiling"
    position.follow(Progress(state=JobState.TRAINING, epoch=3))
    position.follow(Progress(step=16, loss=0.5))  # state and epoch unchanged
    assert str(position) == "in epoch 3, step 16"


class _Failed(grpc.aio.AioRpcError):
    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), grpc.aio.Metadata(), "boom in step"
        )


def test_a_failed_call_names_the_silent_agents_or_else_the_status() -> None:
    position = JobPosition(JobState.TRAINING, epoch=2, step=5)
    named = call_failure(_Failed(), {"phone": "UNAVAILABLE: connection refused"}, position)
    assert named.startswith(
        "agent(s) phone (UNAVAILABLE: connection refused) stopped answering in epoch 2, step 5"
    )
    assert call_failure(_Failed(), {}, position) == (
        "a call to an agent failed in epoch 2, step 5: INTERNAL: boom in step (the agents' "
        "logs say more)"
    )


def test_the_watch_keeps_watching_while_agents_answer_and_names_one_that_stops() -> None:
    async def watch() -> tuple[dict[str, str], bool]:
        server = grpc.aio.server()
        checker = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checker, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        await checker.set("", health_pb2.HealthCheckResponse.SERVING)
        channels = {"a": grpc.aio.insecure_channel(f"127.0.0.1:{port}")}
        try:
            watching = asyncio.ensure_future(first_silent(channels, (), 0.02, 3))
            await asyncio.sleep(0.3)  # some 15 checks, all answered
            kept_watching = not watching.done()
            await checker.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            return await asyncio.wait_for(watching, timeout=30), kept_watching
        finally:
            await channels["a"].close()
            await server.stop(None)

    gone, kept_watching = asyncio.run(watch())
    assert kept_watching
    assert gone == {"a": "NOT_SERVING"}
