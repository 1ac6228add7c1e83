"""Agents and a coordinator registry started in the test's own event loop."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from agent.server import AgentConfig, AgentServer
from pac.wire.auth import token_metadata
from pac.wire.channel import TransportSecurity, open_channel
from protos.v1 import agent_pb2_grpc

TOKEN = "mesh-test-token"
PLAINTEXT = TransportSecurity(insecure=True)

StartAgents = Callable[..., contextlib.AbstractAsyncContextManager[list[AgentServer]]]


@pytest.fixture
def token() -> str:
    return TOKEN


@pytest.fixture
def start_agents(tmp_path: Path) -> StartAgents:
    """``async with start_agents(2, limits=...) as [a, b]``: agents on 127.0.0.1, free
    ports, the join token ``TOKEN``, stopped at the end."""

    @contextlib.asynccontextmanager
    async def start(count: int = 2, **overrides: Any) -> AsyncIterator[list[AgentServer]]:
        agents: list[AgentServer] = []
        try:
            for index in range(count):
                settings: dict[str, Any] = {
                    "name": f"agent-{index}",
                    "listen": "127.0.0.1:0",
                    "cache_dir": tmp_path / f"cache-{index}",
                    "join_token": TOKEN,
                    "benchmark_s": 0.01,
                    "security": PLAINTEXT,
                    "drain_grace_s": 2.0,
                    **overrides,
                }
                agents.append(await AgentServer.start(AgentConfig(**settings)))
            yield agents
        finally:
            for agent in agents:
                await agent.stop(0.5)

    return start


@contextlib.asynccontextmanager
async def _stub(
    address: str, security: TransportSecurity = PLAINTEXT
) -> AsyncIterator[agent_pb2_grpc.AgentStub]:
    channel = open_channel(address, security)
    try:
        yield agent_pb2_grpc.AgentStub(channel)
    finally:
        await channel.close()


@pytest.fixture
def agent_stub() -> Callable[..., contextlib.AbstractAsyncContextManager[agent_pb2_grpc.AgentStub]]:
    """``async with agent_stub(address) as stub``: calls need ``metadata=auth``."""
    return _stub


@pytest.fixture
def auth() -> tuple[tuple[str, str], ...]:
    return token_metadata(TOKEN)


@pytest.fixture
def status_of() -> Callable[..., Any]:
    """``await status_of(coro)`` -> the grpc.StatusCode the call ended with (OK if none)."""

    async def run(awaitable: Any) -> grpc.StatusCode:
        try:
            await awaitable
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    return run
