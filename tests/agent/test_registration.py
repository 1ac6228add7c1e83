"""Agents register with a real coordinator registry, heartbeat, and come back after it
restarts; the registry marks silent agents lost."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import grpc

from agent.device import cpu_pool, usable_cpus
from coordinator.registry import AgentLiveness, AgentRegistry
from coordinator.server import serve_registry
from pac.wire.auth import token_metadata
from pac.wire.channel import TransportSecurity, open_channel
from protos.v1 import agent_pb2, coordinator_pb2, coordinator_pb2_grpc


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_registry_liveness_and_reregistration_by_name() -> None:
    clock = Clock()
    registry = AgentRegistry(heartbeat_interval_s=2.0, missed_heartbeats=3, clock=clock)
    first = registry.register("jetson-1", "10.0.0.2:50061")
    clock.now += 5
    registry.heartbeat(first.agent_id, job_id="j", step=4)
    clock.now += 5.9
    [(record, state)] = registry.agents()
    assert state == AgentLiveness.ALIVE and record.step == 4
    clock.now += 0.2  # 6.1 s since the last heartbeat > 3 x 2 s
    assert registry.agents() == []
    [(_, state)] = registry.agents(include_lost=True)
    assert state == AgentLiveness.LOST
    again = registry.register("jetson-1", "10.0.0.2:50061")  # it restarted
    assert again.agent_id != first.agent_id and len(registry.agents()) == 1


async def list_agents(address: str, token: str | None) -> coordinator_pb2.ListAgentsReply:
    channel = open_channel(address, TransportSecurity(insecure=True))
    try:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        reply: coordinator_pb2.ListAgentsReply = await stub.ListAgents(
            coordinator_pb2.ListAgentsRequest(), metadata=token_metadata(token), timeout=5
        )
        return reply
    finally:
        await channel.close()


async def wait_for(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_agent_registers_heartbeats_and_reregisters_after_coordinator_restart(
    start_agents: Any, token: str, status_of: Any
) -> None:
    async def scenario() -> None:
        coordinator = await serve_registry(
            "127.0.0.1:0", token, registry=AgentRegistry(heartbeat_interval_s=0.1)
        )
        address = f"127.0.0.1:{coordinator.port}"
        try:
            async with start_agents(1, coordinator=address, registration_retry_s=0.05) as [agent]:
                registration = agent.registration
                assert registration is not None
                await wait_for(lambda: registration.registered.is_set(), "registration")
                # Registered with no job: its resident memory then is its idle floor.
                assert agent.metrics.memory.idle_bytes > 0
                reply = await list_agents(address, token)
                [info] = reply.agents
                assert info.name == "agent-0" and info.address == agent.address
                assert info.state == coordinator_pb2.AGENT_STATE_ALIVE
                assert info.profile.cpu_cores >= 1 and info.profile.matmul_gflops > 0
                # The cores it computes on, named by machine and affinity: agents started
                # on this machine with this affinity share them.
                assert info.profile.cpu_pool == cpu_pool(usable_cpus())
                assert info.profile.cpu_cores == len(os.sched_getaffinity(0))
                first_seen = info.last_heartbeat_unix
                registry = coordinator.registry
                # Heartbeats arrive: the record's last heartbeat moves on.
                await wait_for(
                    lambda: registry.agents()[0][0].last_heartbeat > first_seen, "a heartbeat"
                )

                # Wrong or missing token: refused, and the registry still answers.
                assert await status_of(list_agents(address, "wrong")) == (
                    grpc.StatusCode.UNAUTHENTICATED
                )
                assert await status_of(list_agents(address, None)) == (
                    grpc.StatusCode.UNAUTHENTICATED
                )

                await coordinator.stop(0)
                coordinator = await serve_registry(
                    address, token, registry=AgentRegistry(heartbeat_interval_s=0.1)
                )
                await wait_for(lambda: registration.registrations >= 2, "re-registration")
                [info] = (await list_agents(address, token)).agents
                assert info.name == "agent-0"
                assert info.agent_id == registration.agent_id
            # Stopping (SIGTERM) tells the coordinator at once that the agent is draining.
            [(_, state)] = coordinator.registry.agents()
            assert state == AgentLiveness.DRAINING
        finally:
            await coordinator.stop(0)

    asyncio.run(scenario())


def test_register_refuses_an_agent_without_name(token: str, status_of: Any) -> None:
    async def scenario() -> None:
        coordinator = await serve_registry("127.0.0.1:0", token)
        channel = open_channel(f"127.0.0.1:{coordinator.port}", TransportSecurity(insecure=True))
        try:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            request = coordinator_pb2.RegisterRequest(
                address="x:1", profile=agent_pb2.DeviceProfile()
            )
            assert await status_of(stub.Register(request, metadata=token_metadata(token))) == (
                grpc.StatusCode.INVALID_ARGUMENT
            )
            request.name = "phone"
            reply = await stub.Register(request, metadata=token_metadata(token))
            assert reply.agent_id and reply.heartbeat_interval_s > 0
            assert await status_of(
                stub.Heartbeat(
                    coordinator_pb2.HeartbeatRequest(agent_id="unknown"),
                    metadata=token_metadata(token),
                )
            ) == (grpc.StatusCode.NOT_FOUND)
        finally:
            await channel.close()
            await coordinator.stop(0)

    asyncio.run(scenario())
