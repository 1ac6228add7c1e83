"""``pac planner``: run the planner as a gRPC service (health and reflection on)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

import grpc

from planner.metrics import PlannerMetrics

log = logging.getLogger("pac.planner")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="0.0.0.0:50071", help="host:port to serve on")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus metrics on this port (0 = none)",
    )
    parser.add_argument("--metrics-addr", default="0.0.0.0", help="address for /metrics")


async def start_server(
    listen: str, metrics: PlannerMetrics | None = None
) -> tuple[grpc.aio.Server, int]:
    """A started ``grpc.aio`` server with the planner, health and reflection; and its port."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    from planner.servicer import PlannerServicer
    from protos.v1 import planner_pb2, planner_pb2_grpc

    server = grpc.aio.server()
    planner_pb2_grpc.add_PlannerServicer_to_server(PlannerServicer(metrics), server)
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


async def _serve(listen: str, metrics: PlannerMetrics) -> None:
    server, port = await start_server(listen, metrics)
    log.info("planner listening on %s (port %d)", listen, port)
    await server.wait_for_termination()


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    metrics = PlannerMetrics()
    if args.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(args.metrics_port, addr=args.metrics_addr, registry=metrics.registry)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.listen, metrics))
    return 0
