"""The coordinator's gRPC server: registry + jobs (one ``pac.v1.Coordinator`` service)
behind the join-token interceptor, with health and reflection on."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coordinator.core import Coordinator
from coordinator.job_servicer import CoordinatorServicer, JobListServicer
from pac.wire.auth import JoinTokenInterceptor
from pac.wire.channel import SERVER_OPTIONS, TransportSecurity, bind
from protos.v1 import coordinator_pb2, coordinator_pb2_grpc

SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name
JOB_LIST_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["JobList"].full_name


async def serve_coordinator(
    coordinator: Coordinator, listen: str, join_token: str, security: TransportSecurity
) -> tuple[grpc.aio.Server, int]:
    """A started server for ``coordinator`` on ``listen`` (port 0 = any); and its port."""
    server = grpc.aio.server(
        interceptors=[JoinTokenInterceptor(join_token)], options=SERVER_OPTIONS
    )
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(coordinator), server)
    coordinator_pb2_grpc.add_JobListServicer_to_server(JobListServicer(coordinator), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, JOB_LIST_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = bind(server, listen, security)
    await server.start()
    await checker.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await checker.set(JOB_LIST_NAME, health_pb2.HealthCheckResponse.SERVING)
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port
