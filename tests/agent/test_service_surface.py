"""Health, reflection, Drain and Shutdown; job settings that cast activations on the wire."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from pac.wire.client import send_tensors
from pac.wire.mailbox import RoutingKey
from protos.v1 import agent_pb2, tensors_pb2


def test_health_reflection_drain_and_shutdown(
    start_agents: Any, agent_stub: Any, auth: Any, status_of: Any
) -> None:
    async def scenario() -> None:
        async with start_agents(1) as [agent]:
            channel = agent.peers.get(agent.address)
            health = health_pb2_grpc.HealthStub(channel)
            # Health and reflection answer without the join token.
            reply = await health.Check(health_pb2.HealthCheckRequest(service="pac.v1.Agent"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            async for response in responses:
                names = {s.name for s in response.list_services_response.service}
                assert {"pac.v1.Agent", "grpc.health.v1.Health"} <= names
                break

            async with agent_stub(agent.address) as stub:
                drained = await stub.Drain(agent_pb2.DrainRequest(timeout_s=1), metadata=auth)
                assert drained.in_flight == 0
                # Draining: new work is refused with UNAVAILABLE (try another agent).
                assert await status_of(
                    stub.OpenJob(agent_pb2.OpenJobRequest(job_id="k"), metadata=auth)
                ) == (grpc.StatusCode.UNAVAILABLE)
                await stub.Shutdown(agent_pb2.ShutdownRequest(timeout_s=1), metadata=auth)
            await asyncio.wait_for(agent.stopped.wait(), 10)

    asyncio.run(scenario())


def test_job_settings_cast_activations_on_the_wire(start_agents: Any, token: str) -> None:
    hidden = torch.randn(2, 64, 64)
    settings = '{"wire_dtypes": {"TENSOR_KIND_ACTIVATION": "float16"}}'

    async def scenario() -> tuple[torch.Tensor, int]:
        async with start_agents(2) as (a, b):
            a.runtime.open_job("j", settings)
            b.runtime.open_job("j")
            routing = tensors_pb2.Routing(
                job_id="j", step=1, kind=tensors_pb2.TENSOR_KIND_ACTIVATION
            )
            await send_tensors(a.peers.get(a.address), {"hidden": hidden}, routing, token=token)
            [_, sent] = await a.runtime.run_step(
                "j",
                1,
                [
                    agent_pb2.Instruction(action=agent_pb2.ACTION_RECV),
                    agent_pb2.Instruction(action=agent_pb2.ACTION_SEND, peer=b.address),
                ],
            )
            got = await b.runtime.mailbox.get(RoutingKey("j", 1, 0, 1, routing.kind), timeout=5)
            return got.tensors["hidden"], sent.nbytes

    received, nbytes = asyncio.run(scenario())
    assert nbytes < hidden.numel() * 4 * 0.6  # float16 on the wire
    assert received.dtype == torch.float32
    torch.testing.assert_close(received, hidden, rtol=1e-3, atol=1e-3)


def test_runtime_refuses_bad_wire_settings_without_grpc(tmp_path: Any) -> None:
    import pytest

    from agent.errors import BadRequest
    from agent.runtime import AgentRuntime

    async def never_send(*args: Any) -> int:
        raise AssertionError("nothing is sent")

    async def scenario() -> None:
        runtime = AgentRuntime("solo", tmp_path, never_send)
        for settings, message in [
            ("{nope", "not valid JSON"),
            ('{"wire_dtypes": {"TENSOR_KIND_NOPE": "float16"}}', "unknown tensor kind"),
            ('{"wire_dtypes": {"TENSOR_KIND_ACTIVATION": "int4"}}', "unknown wire dtype"),
        ]:
            with pytest.raises(BadRequest, match=message):
                runtime.open_job("j", settings)
        assert runtime.jobs == {}

    asyncio.run(scenario())
