"""The gRPC service answers like the library, and says why when nothing fits."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from planner import Cluster, LinkProfile, Network, plan
from planner.convert import (
    ACTION_FROM_PROTO,
    cluster_to_proto,
    model_to_proto,
    plan_from_proto,
)
from planner.serve import start_server
from planner.synthetic import MIB, device, random_cluster, synthetic_model
from protos.v1 import planner_pb2 as pb
from protos.v1 import planner_pb2_grpc


async def _call(requests: list[pb.PlanRequest]) -> list[pb.PlanResponse | grpc.aio.AioRpcError]:
    server, port = await start_server("127.0.0.1:0")
    out: list[pb.PlanResponse | grpc.aio.AioRpcError] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = planner_pb2_grpc.PlannerStub(channel)
            for request in requests:
                try:
                    out.append(await stub.Plan(request, timeout=30))
                except grpc.aio.AioRpcError as error:
                    out.append(error)
            from grpc_health.v1 import health_pb2, health_pb2_grpc

            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="pac.v1.Planner"))
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await server.stop(None)
    return out


def test_plan_over_grpc_matches_library_and_reports_errors() -> None:
    model = synthetic_model(6, hidden=256, seq=32)
    cluster = random_cluster(np.random.default_rng(2), 4, model, memory_mib=(8, 30),
                             bandwidth_mbps=(500, 1000))
    good = pb.PlanRequest(cluster=cluster_to_proto(cluster), model=model_to_proto(model),
                          technique="parallel-adapters", global_batch=8)
    small = Cluster((device("jetson-2", 6, 1e-3, 5 * MIB),), Network(LinkProfile(1e8)))
    infeasible = pb.PlanRequest(cluster=cluster_to_proto(small), model=model_to_proto(model),
                                global_batch=8)
    bad = pb.PlanRequest(cluster=cluster_to_proto(cluster), model=model_to_proto(model),
                         technique="sgd-on-a-toaster", global_batch=8)
    answer, refused, rejected = asyncio.run(_call([good, infeasible, bad]))

    expected = plan(cluster, model, "parallel-adapters", 8)
    assert isinstance(answer, pb.PlanResponse)
    got = answer.plan
    assert got.step_time_s == pytest.approx(expected.step_time_s)
    assert got.micro_batches == expected.micro_batches
    assert [(s.start, s.end, tuple(s.group.devices), tuple(s.group.shares)) for s in got.stages] \
        == [(s.start, s.end, s.group.devices, s.group.shares) for s in expected.stages]
    schedules = {s.device: [(ACTION_FROM_PROTO[i.action], i.micro_batch, i.peer)
                            for i in s.instructions] for s in got.schedules}
    assert schedules == {n: [(i.action, i.micro_batch, i.peer) for i in ops]
                         for n, ops in expected.instructions}
    assert answer.table == str(expected)
    # A client gets the library's value back, field for field.
    assert plan_from_proto(got) == expected

    assert isinstance(refused, grpc.aio.AioRpcError)
    assert refused.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "jetson-2" in (refused.details() or "")
    assert isinstance(rejected, grpc.aio.AioRpcError)
    assert rejected.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "technique" in (rejected.details() or "")
