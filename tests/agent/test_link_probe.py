"""An agent measures its links to peers (Ping round trips) for the planner: one
measurement per peer, with a latency and a bandwidth that a bigger payload does not
change much; bad requests and dead peers are clear statuses."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import grpc

from protos.v1 import agent_pb2


def _dead_address() -> str:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_an_agent_measures_its_links_to_its_peers(
    start_agents: Any, agent_stub: Any, auth: Any, status_of: Any
) -> None:
    async def run() -> None:
        async with start_agents(3) as agents, agent_stub(agents[0].address) as stub:
            pong = await stub.Ping(agent_pb2.PingRequest(payload=b"x" * 1000), metadata=auth)
            assert pong.received_bytes == 1000
            peers = [agents[1].address, agents[2].address]
            reply = await stub.ProbeLinks(
                agent_pb2.ProbeLinksRequest(peers=peers, payload_bytes=256 << 10, repeats=3),
                metadata=auth,
            )
            assert [link.peer for link in reply.links] == peers
            for link in reply.links:
                # loopback: well under 100 ms one way, well over 1 MB/s
                assert 0 < link.latency_s < 0.1
                assert link.bandwidth_bps > 1e6

            no_peers = agent_pb2.ProbeLinksRequest()
            assert await status_of(stub.ProbeLinks(no_peers, metadata=auth)) == (
                grpc.StatusCode.INVALID_ARGUMENT
            )
            too_big = agent_pb2.ProbeLinksRequest(peers=peers, payload_bytes=64 << 20)
            assert await status_of(stub.ProbeLinks(too_big, metadata=auth)) == (
                grpc.StatusCode.INVALID_ARGUMENT
            )
            dead = agent_pb2.ProbeLinksRequest(peers=[_dead_address()], repeats=1)
            try:
                await stub.ProbeLinks(dead, metadata=auth, timeout=60)
                raise AssertionError("probing a dead peer must fail")
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                assert "cannot probe its link" in (error.details() or "")
            # and the agent still serves
            again = await stub.Ping(agent_pb2.PingRequest(), metadata=auth)
            assert again.received_bytes == 0

    asyncio.run(run())
