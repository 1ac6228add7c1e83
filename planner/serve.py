"""``pac planner``: run the planner as a gRPC service (health and reflection on)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

import grpc

log = logging.getLogger("pac.planner")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="0.0.0.0:50071", help="host:port to serve on")


async def start_server(listen: str) -> tuple[grpc.aio.Server, int]:
    """A started ``grpc.aio`` server with the planner, health and reflection; and its port."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from planner.servicer import PlannerServicer
    from protos.v1 import planner_pb2, planner_pb2_grpc

    server = grpc.aio.server()
    planner_pb2_grpc.add_PlannerServicer_to_server(PlannerServicer(), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    service = planner_pb2.DESCRIPTOR.services_by_name["Planner"].full_name
    reflection.enable_server_reflection(
        (service, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}; is the port taken?")
    await server.start()
    await checker.set(service, health_pb2.HealthCheckResponse.SERVING)
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port


async def _serve(listen: str) -> None:
    server, port = await start_server(listen)
    log.info("planner listening on %s (port %d)", listen, port)
    await server.wait_for_termination()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.listen))
    return 0
