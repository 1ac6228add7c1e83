"""Coordinator server construction. For now only the agent registry is served.

``serve_registry`` is what agent tests run against: a real Register/Heartbeat/ListAgents
behind the join-token interceptor, with health and reflection on. The job service and the
REST face come with the full coordinator.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coordinator.registry import AgentRegistry
from coordinator.registry_servicer import RegistryServicer
from pac.wire.auth import JoinTokenInterceptor
from pac.wire.channel import SERVER_OPTIONS, TransportSecurity, bind
from protos.v1 import coordinator_pb2, coordinator_pb2_grpc

SERVICE_NAME = "pac.v1.Coordinator"


@dataclass
class RegistryServer:
    server: grpc.aio.Server
    registry: AgentRegistry
    port: int

    async def stop(self, grace: float | None = None) -> None:
        await self.server.stop(grace)


async def serve_registry(
    listen: str,
    join_token: str,
    security: TransportSecurity | None = None,
    registry: AgentRegistry | None = None,
) -> RegistryServer:
    """Start a coordinator that serves the agent registry on ``listen`` (port 0 = any).

    Returns once it accepts calls; ``await result.stop()`` to end it.
    """
    registry = registry or AgentRegistry()
    server = grpc.aio.server(
        interceptors=[JoinTokenInterceptor(join_token)], options=SERVER_OPTIONS
    )
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(RegistryServicer(registry), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = (
        coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name,
        health.SERVICE_NAME,
        reflection.SERVICE_NAME,
    )
    reflection.enable_server_reflection(service_names, server)
    port = bind(server, listen, security or TransportSecurity(insecure=True))
    await server.start()
    await health_servicer.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return RegistryServer(server, registry, port)
