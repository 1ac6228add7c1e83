"""RunSteps (a range of cache-phase steps, streamed reports) answers bad calls with clear
statuses, and the agent keeps serving after them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
import torch

from pac.pipeline.batch_part import BatchPart, pack_steps
from pac.wire.client import send_tensors
from protos.v1 import agent_pb2, tensors_pb2


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


def test_bad_range_calls_get_clear_statuses(
    start_agents: Callable[..., Any],
    agent_stub: Callable[..., Any],
    auth: tuple[tuple[str, str], ...],
    status_of: Callable[..., Any],
    token: str,
) -> None:
    async def scenario() -> None:
        async with start_agents(1) as [agent], agent_stub(agent.address) as stub:
            request = agent_pb2.RunStepsRequest(job_id="nope", first_step=0, steps=2)
            assert await status_of(_drain(stub.RunSteps(request, metadata=auth))) == (
                grpc.StatusCode.NOT_FOUND
            )
            # A job opened without mesh settings has no training session to run.
            await stub.OpenJob(agent_pb2.OpenJobRequest(job_id="plain"), metadata=auth)
            request = agent_pb2.RunStepsRequest(job_id="plain", first_step=0, steps=2)
            assert await status_of(_drain(stub.RunSteps(request, metadata=auth))) == (
                grpc.StatusCode.INVALID_ARGUMENT
            )
            # The range's message never arrives: a deadline, not a hang.
            agent.runtime.jobs["plain"].training = object()
            request = agent_pb2.RunStepsRequest(
                job_id="plain", first_step=0, steps=2, recv_timeout_s=0.2
            )
            assert await status_of(_drain(stub.RunSteps(request, metadata=auth))) == (
                grpc.StatusCode.DEADLINE_EXCEEDED
            )
            # A message that holds fewer steps than asked for is refused.
            part = BatchPart.whole({"labels": torch.zeros(2, dtype=torch.long)}, ["a", "b"], 2)
            routing = tensors_pb2.Routing(
                job_id="plain",
                step=5,
                micro_batch=1,
                kind=tensors_pb2.TENSOR_KIND_BATCH,
                sender="coordinator",
            )
            channel = agent.peers.get(agent.address)
            await send_tensors(channel, pack_steps([part, part, part]), routing, token=token)
            request = agent_pb2.RunStepsRequest(job_id="plain", first_step=5, steps=2)
            assert await status_of(_drain(stub.RunSteps(request, metadata=auth))) == (
                grpc.StatusCode.INVALID_ARGUMENT
            )
            assert agent.runtime.in_flight == 0
            described = await stub.Describe(agent_pb2.DescribeRequest(), metadata=auth)
            assert described.name == "agent-0"

    asyncio.run(scenario())
