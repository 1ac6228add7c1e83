"""The agent process: gRPC server, metrics endpoint, registration, drain on SIGTERM.

``AgentServer.start`` measures the device, serves the Agent service (with the join-token
interceptor, health and reflection), starts ``/metrics`` and the registration loop.
``stop`` drains: health turns NOT_SERVING, new work is refused, work in flight finishes
(up to the grace period), then the server stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from agent.device import measure_device, pick_device
from agent.errors import JobNotFound, PeerUnreachable
from agent.metrics import AgentMetrics, rss_bytes
from agent.registration import Registration
from agent.runtime import AgentRuntime
from agent.servicer import AgentServicer
from pac.wire.auth import JoinTokenInterceptor, token_metadata
from pac.wire.channel import SERVER_OPTIONS, ChannelPool, TransportSecurity, bind, open_channel
from pac.wire.client import send_tensors
from pac.wire.limits import DEFAULT_CHUNK_BYTES, WireLimits
from pac.wire.link_probe import LinkMeasurement, probe_link
from pac.wire.receiver import TensorReceiver
from pac.wire.service import service_handler
from protos.v1 import agent_pb2, coordinator_pb2, tensors_pb2

log = logging.getLogger("pac.agent")
SERVICE_NAME = "pac.v1.Agent"


@dataclass
class AgentConfig:
    name: str
    listen: str = "0.0.0.0:50061"
    # Where peers reach this agent; default: the listen address (port 0 resolved).
    advertise: str = ""
    coordinator: str = ""
    cache_dir: Path = field(default_factory=lambda: Path("pac-cache"))
    metrics_port: int | None = None
    metrics_addr: str = "0.0.0.0"
    # Token every caller must present; None disables the check (in-process tests only:
    # `pac agent` refuses to start without one).
    join_token: str | None = None
    security: TransportSecurity = field(default_factory=lambda: TransportSecurity(insecure=True))
    limits: WireLimits = field(default_factory=WireLimits)
    # Payload bytes per chunk of the tensor messages this agent sends (1-4 MiB).
    chunk_size: int = DEFAULT_CHUNK_BYTES
    benchmark_s: float = 0.25
    drain_grace_s: float = 30.0
    # First retry delay of registration (doubles up to 30 s while the coordinator is away).
    registration_retry_s: float = 1.0


class AgentServer:
    """One running agent. Use ``await AgentServer.start(config)``, then ``await stop()``."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.metrics = AgentMetrics()
        self.peers = ChannelPool(config.security)
        self.runtime = AgentRuntime(
            config.name, config.cache_dir, self.send_to, self.metrics, device=pick_device()
        )
        self.receiver = TensorReceiver(
            self.runtime.mailbox, config.limits, self.runtime.accepts_job, self.metrics
        )
        self.health = health.aio.HealthServicer()
        self.server = grpc.aio.server(
            interceptors=[JoinTokenInterceptor(config.join_token)] if config.join_token else [],
            options=SERVER_OPTIONS,
        )
        self.port = 0
        self.address = ""
        self.metrics_port = 0
        self.profile = agent_pb2.DeviceProfile()
        self.registration: Registration | None = None
        self._coordinator_channel: grpc.aio.Channel | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing: set[asyncio.Task[None]] = set()  # jobs the coordinator says ended
        self._metrics_server: Any = None
        self.stopped = asyncio.Event()

    async def send_to(
        self,
        peer: str,
        tensors: dict[str, torch.Tensor],
        routing: tensors_pb2.Routing,
        wire_dtype: torch.dtype | None = None,
    ) -> int:
        """Send one tensor message to the agent at ``peer`` (host:port) over the pooled
        channel; returns the bytes the peer acknowledged."""
        ack = await send_tensors(
            self.peers.get(peer),
            tensors,
            routing,
            token=self.config.join_token,
            peer=peer,
            observer=self.metrics,
            chunk_size=self.config.chunk_size,
            wire_dtype=wire_dtype,
        )
        return int(ack.received_bytes)

    async def probe_links(
        self, peers: list[str], payload_bytes: int, repeats: int
    ) -> list[LinkMeasurement]:
        """This device's links to ``peers`` (agent addresses), measured one after another
        so that the probes do not share the links."""
        metadata = token_metadata(self.config.join_token)
        measured = []
        for peer in peers:
            try:
                measured.append(
                    await probe_link(self.peers.get(peer), peer, metadata, payload_bytes, repeats)
                )
            except grpc.aio.AioRpcError as error:
                raise PeerUnreachable(
                    f"agent {self.config.name!r} cannot probe its link to {peer}: "
                    f"{error.code().name} {error.details()}"
                ) from None
        return measured

    def _status(self) -> coordinator_pb2.HeartbeatRequest:
        step = max((job.step for job in self.runtime.jobs.values()), default=0)
        job_id = next(iter(self.runtime.jobs), "")
        return coordinator_pb2.HeartbeatRequest(
            job_id=job_id,
            step=step,
            rss_bytes=rss_bytes(),
            draining=self.runtime.draining,
            open_jobs=list(self.runtime.jobs),
        )

    def _close_ended(self, job_ids: list[str]) -> None:
        """Close the jobs the coordinator says have ended (it could not tell this agent
        itself: the agent was frozen or cut off when the job went on without it)."""
        for job_id in job_ids:
            if job_id in self.runtime.jobs:
                task = asyncio.create_task(self._close_missed(job_id))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    async def _close_missed(self, job_id: str) -> None:
        with contextlib.suppress(JobNotFound):  # (closed meanwhile)
            await self.runtime.close_job(job_id)
            log.warning("job %s has ended, or goes on without this agent: closed it here", job_id)

    def _registration_changed(self, registered: bool) -> None:
        self.metrics.registered.set(int(registered))
        if registered and not self.runtime.jobs:
            # Registered and idle: the memory every job's figures are measured above.
            self.metrics.memory.note_idle()

    def _describe(self) -> agent_pb2.DeviceProfile:
        return self.profile

    @classmethod
    async def start(cls, config: AgentConfig) -> AgentServer:
        self = cls(config)
        servicer = AgentServicer(
            self.runtime, self.receiver, self._describe, self.request_shutdown, self.probe_links
        )
        agent_service = agent_pb2.DESCRIPTOR.services_by_name["Agent"]
        self.server.add_generic_rpc_handlers(
            (
                service_handler(
                    agent_service,
                    servicer,
                    raw_requests={"SendTensors"},
                    raw_responses={"ExportAdapters", "ReadCheckpoint"},
                ),
            )
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (agent_service.full_name, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = bind(self.server, config.listen, config.security)
        host = config.listen.rsplit(":", 1)[0]
        if host in ("", "0.0.0.0", "[::]"):
            host = socket.gethostname()  # a wildcard is no address a peer can dial
        self.address = config.advertise or f"{host}:{self.port}"
        # Measuring takes a fraction of a second of matmuls: off the event loop.
        self.profile = await asyncio.to_thread(
            measure_device, config.name, self.address, config.cache_dir, config.benchmark_s
        )
        self.metrics.info.info(
            {
                "name": config.name,
                "accelerator": self.profile.accelerator,
                "torch": torch.__version__,
            }
        )
        await self.server.start()
        await self.health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        if config.metrics_port is not None:
            self._metrics_server, _ = start_http_server(
                config.metrics_port, config.metrics_addr, registry=self.metrics.registry
            )
            self.metrics_port = self._metrics_server.server_port
        if config.coordinator:
            self._coordinator_channel = open_channel(config.coordinator, config.security)
            self.registration = Registration(
                self._coordinator_channel,
                self._describe,
                config.join_token,
                self._status,
                on_change=self._registration_changed,
                on_ended=self._close_ended,
                retry_s=config.registration_retry_s,
            )
            self._tasks.append(asyncio.create_task(self.registration.run()))
        log.info(
            "agent %s serving on %s (metrics on %s)",
            config.name,
            self.address,
            self.metrics_port or "off",
        )
        return self

    def request_shutdown(self, grace: float | None = None) -> None:
        """Drain and stop in the background (Shutdown RPC, SIGTERM)."""
        self._tasks.append(asyncio.create_task(self.stop(grace)))

    async def stop(self, grace: float | None = None) -> None:
        """Drain work in flight (up to ``grace`` s), then stop everything."""
        if self.stopped.is_set():
            return
        grace = self.config.drain_grace_s if grace is None else grace
        await self.health.enter_graceful_shutdown()
        drained = asyncio.ensure_future(self.runtime.drain(grace))
        if self.registration is not None:
            await self.registration.announce_draining()
        left = await drained
        if left:
            log.warning("stopping with %d calls still running after %.0f s", left, grace)
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        await self.server.stop(1.0)
        await self.peers.close()
        if self._coordinator_channel is not None:
            await self._coordinator_channel.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self.stopped.set()
