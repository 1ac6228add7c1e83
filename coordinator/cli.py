"""``pac coordinator``: the gRPC service, the REST API and /metrics in one process.

    pac coordinator --listen :50051 --rest :8080 --metrics-port 9100 --state DIR \\
        --join-token-file F  (or env PAC_JOIN_TOKEN)  --insecure | --tls-cert C --tls-key K

SIGTERM or SIGINT stops it cleanly (exit 0); a job still running is failed by the next
coordinator started on the same ``--state`` directory.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default=":50051", help="gRPC [HOST]:PORT (port 0 = any)")
    parser.add_argument(
        "--rest", default=":8080", help="REST API [HOST]:PORT (port 0 = any, 'off' = none)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9100,
        help="port of the Prometheus /metrics endpoint (0 = any, -1 = off)",
    )
    parser.add_argument("--metrics-addr", default="0.0.0.0", help="address /metrics binds")
    parser.add_argument(
        "--state",
        default=os.environ.get("PAC_STATE", "pac-coordinator"),
        help="directory of the job database and job outputs (env PAC_STATE)",
    )
    parser.add_argument(
        "--join-token-file",
        default=None,
        help="file holding the mesh's join token (else env PAC_JOIN_TOKEN)",
    )
    parser.add_argument("--tls-cert", default=None, help="PEM certificate of the coordinator")
    parser.add_argument("--tls-key", default=None, help="PEM private key of the coordinator")
    parser.add_argument(
        "--tls-ca",
        default=None,
        help="PEM CA of the mesh (clients must present certificates: mTLS)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="serve gRPC in plaintext (trusted networks and tests only)",
    )
    parser.add_argument(
        "--planner",
        default=os.environ.get("PAC_PLANNER", ""),
        help="planner HOST:PORT for mesh jobs (env PAC_PLANNER; default: "
        "the planner library in this process)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=2.0,
        help="seconds between agent heartbeats (told to each agent)",
    )
    parser.add_argument(
        "--missed-heartbeats",
        type=int,
        default=3,
        help="an agent silent this many intervals is marked lost",
    )
    parser.add_argument(
        "--profile-max-age",
        type=float,
        default=3600.0,
        help="seconds an agent's profile of a model stays good for the next job on the same "
        "model and shapes (0: every job measures its agents again)",
    )
    parser.add_argument(
        "--placement", default="local", help="driver of jobs whose spec names none (local, or mesh)"
    )
    parser.add_argument("--log-level", default="INFO")


def host_port(text: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """ ":8080" -> ("0.0.0.0", 8080); "127.0.0.1:0" -> ("127.0.0.1", 0)."""
    host, _, port = text.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"{text!r} is not [HOST]:PORT")
    return host.strip("[]") or default_host, int(port)


def run(args: argparse.Namespace) -> int:
    import asyncio
    import logging
    import sys
    from pathlib import Path

    from pac.engine.kernel_caches import bound_kernel_caches
    from pac.wire.auth import read_join_token
    from pac.wire.channel import SecurityError, TransportSecurity

    bound_kernel_caches()  # local jobs run models here (see pac/engine/kernel_caches.py)

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        security = TransportSecurity(
            cert=Path(args.tls_cert) if args.tls_cert else None,
            key=Path(args.tls_key) if args.tls_key else None,
            ca=Path(args.tls_ca) if args.tls_ca else None,
            insecure=args.insecure,
        )
        token = read_join_token(args.join_token_file)
        listen = "{}:{}".format(*host_port(args.listen))
        rest = None if args.rest == "off" else host_port(args.rest)
    except (SecurityError, OSError, ValueError) as error:
        print(f"pac coordinator: {error}", file=sys.stderr)
        return 2
    if not token:
        print(
            "pac coordinator: no join token: pass --join-token-file or set PAC_JOIN_TOKEN",
            file=sys.stderr,
        )
        return 2
    try:
        return asyncio.run(_serve(args, listen, rest, token, security))
    except OSError as error:
        print(f"pac coordinator: {error}", file=sys.stderr)
        return 1


async def _serve(
    args: argparse.Namespace,
    listen: str,
    rest: tuple[str, int] | None,
    token: str,
    security: object,
) -> int:
    import asyncio
    import logging
    import signal
    from pathlib import Path

    from prometheus_client import start_http_server

    from coordinator.coordinator_grpc import serve_coordinator
    from coordinator.core import Coordinator
    from coordinator.driver import DriverContext, default_drivers
    from coordinator.registry import AgentRegistry
    from coordinator.rest import create_app
    from coordinator.rest_server import rest_server
    from pac.wire.channel import TransportSecurity

    assert isinstance(security, TransportSecurity)
    log = logging.getLogger("pac.coordinator")
    registry = AgentRegistry(args.heartbeat_interval, args.missed_heartbeats)
    context = DriverContext(
        state_dir=Path(args.state),
        join_token=token,
        security=security,
        planner_address=args.planner,
        agent_check_interval_s=args.heartbeat_interval,
        agent_check_misses=args.missed_heartbeats,
        registry=registry,
        profile_max_age_s=args.profile_max_age,
    )
    try:
        coordinator = Coordinator(
            Path(args.state),
            registry=registry,
            drivers=default_drivers(context),
            default_placement=args.placement,
        )
    except ValueError as error:  # an unknown --placement
        raise OSError(str(error)) from None
    server, port = await serve_coordinator(coordinator, listen, token, security)
    metrics_server = None
    metrics_port = -1
    if args.metrics_port >= 0:
        metrics_server, _ = start_http_server(
            args.metrics_port, args.metrics_addr, registry=coordinator.metrics.registry
        )
        metrics_port = metrics_server.server_port
    web = None
    rest_task = None
    rest_port = -1
    if rest is not None:
        web = rest_server(create_app(coordinator), rest[0], rest[1])
        try:
            rest_task, rest_port = await web.start()
        except OSError:
            await server.stop(None)
            coordinator.close()
            raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The first line on stdout says where it serves (pac cluster and scripts read it).
    print(
        f"pac coordinator listening on {listen.rpartition(':')[0]}:{port} rest {rest_port} "
        f"metrics {metrics_port} state {args.state}",
        flush=True,
    )
    await stop.wait()
    log.info("stopping the coordinator")
    if web is not None and rest_task is not None:
        web.should_exit = True
        await rest_task
    await server.stop(2.0)
    await asyncio.to_thread(coordinator.close)
    if metrics_server is not None:
        metrics_server.shutdown()
    log.info("coordinator stopped")
    return 0
