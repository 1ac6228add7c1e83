"""Registering with the coordinator and heartbeating, for as long as the agent runs.

``Registration.run`` loops: register (retrying with backoff while the coordinator is
unreachable), then heartbeat every interval the coordinator asked for. A heartbeat answered
NOT_FOUND (the coordinator restarted and lost its registry) or a lost connection sends it
back to registering. UNAUTHENTICATED (a wrong join token) is logged and retried slowly: an
operator may fix the token file, and a crash loop under systemd helps nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import grpc

from pac.wire.auth import token_metadata
from protos.v1 import agent_pb2, coordinator_pb2, coordinator_pb2_grpc

log = logging.getLogger("pac.agent")


class Registration:
    def __init__(
        self,
        channel: grpc.aio.Channel,
        profile: Callable[[], agent_pb2.DeviceProfile],
        token: str | None,
        status: Callable[[], coordinator_pb2.HeartbeatRequest],
        on_change: Callable[[bool], None] = lambda registered: None,
        on_ended: Callable[[list[str]], None] = lambda job_ids: None,
        retry_s: float = 1.0,
        max_retry_s: float = 30.0,
    ) -> None:
        self.stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        self.profile = profile
        self.metadata = token_metadata(token)
        self.status = status
        self.on_change = on_change
        self.on_ended = on_ended
        self.retry_s = retry_s
        self.max_retry_s = max_retry_s
        self.agent_id = ""
        self.registrations = 0
        self.registered = asyncio.Event()

    async def register_once(self) -> coordinator_pb2.RegisterReply:
        profile = self.profile()
        reply: coordinator_pb2.RegisterReply = await self.stub.Register(
            coordinator_pb2.RegisterRequest(
                name=profile.name, address=profile.address, profile=profile
            ),
            metadata=self.metadata,
            timeout=10,
        )
        self.agent_id = reply.agent_id
        self.registrations += 1
        return reply

    async def run(self) -> None:
        """Register and heartbeat until cancelled."""
        delay = self.retry_s
        while True:
            try:
                reply = await self.register_once()
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "registering with the coordinator failed (%s: %s); retry in %.0f s",
                    error.code().name,
                    error.details(),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_s)
                continue
            delay = self.retry_s
            log.info(
                "registered as %s with coordinator %s", self.agent_id, reply.coordinator_instance
            )
            self.registered.set()
            self.on_change(True)
            await self._heartbeat(reply.heartbeat_interval_s or 5.0)
            self.registered.clear()
            self.on_change(False)

    async def announce_draining(self) -> None:
        """One heartbeat with ``draining`` set, so the coordinator plans around this agent
        at once instead of after its liveness timeout. Best effort: errors are ignored."""
        if not self.registered.is_set():
            return
        request = self.status()
        request.agent_id = self.agent_id
        request.draining = True
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self.stub.Heartbeat(request, metadata=self.metadata, timeout=2)

    async def _heartbeat(self, interval: float) -> None:
        """Heartbeat until the coordinator forgets this agent or cannot be reached."""
        while True:
            await asyncio.sleep(interval)
            request = self.status()
            request.agent_id = self.agent_id
            try:
                reply = await self.stub.Heartbeat(
                    request, metadata=self.metadata, timeout=max(interval, 1.0)
                )
            except grpc.aio.AioRpcError as error:
                log.warning(
                    "heartbeat failed (%s: %s); registering again",
                    error.code().name,
                    error.details(),
                )
                return
            interval = reply.heartbeat_interval_s or interval
            if reply.ended_jobs:
                self.on_ended(list(reply.ended_jobs))
