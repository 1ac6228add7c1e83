"""``pac cluster``: start or stop a local mesh (planner, coordinator, N agents on loopback).

pac cluster up --agents 4 [--dir RUN_DIR] [--base-port 50051] [--threads-per-agent auto]
               [--agent-cpu-quota CORES]
pac status --cluster RUN_DIR
pac cluster down [--dir RUN_DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_DIR = Path("pac-mesh")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = sub.add_parser("up", help="start the mesh and wait until every agent is registered")
    up.add_argument("--agents", type=int, default=4, help="how many agents")
    up.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_DIR,
        help="run directory: logs, state, caches, cluster.json",
    )
    up.add_argument(
        "--base-port",
        type=int,
        default=50051,
        help="coordinator gRPC port; REST +1, metrics +2, planner +3, agents +10..",
    )
    up.add_argument(
        "--threads-per-agent",
        default="auto",
        help="torch threads per agent (auto = cores // (agents + 1))",
    )
    up.add_argument(
        "--agent-cpu-quota",
        type=float,
        default=0.0,
        metavar="CORES",
        help="cap each agent at this many CPUs of time (a cgroup quota, as docker's cpus: "
        "emulates a device of that many cores); needs root or a delegated cgroup; 0 = no cap",
    )
    up.add_argument("--no-planner", action="store_true", help="do not start a planner")
    up.add_argument("--heartbeat-interval", type=float, default=1.0)
    up.add_argument(
        "--foreground", action="store_true", help="stay attached; Ctrl-C or SIGTERM stops the mesh"
    )
    down = sub.add_parser("down", help="stop the mesh started in --dir")
    down.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    down.add_argument(
        "--timeout", type=float, default=15.0, help="seconds between SIGTERM and SIGKILL"
    )


def run(args: argparse.Namespace) -> int:
    import signal
    import sys
    import threading

    from pac.cluster.local_mesh import (
        CLUSTER_FILE,
        LocalMesh,
        MeshError,
        load_services,
        stop_services,
    )

    if args.action == "down":
        try:
            services = load_services(args.dir)
        except MeshError as error:
            print(f"pac cluster down: {error}", file=sys.stderr)
            return 1
        stop_services(services[::-1], timeout_s=args.timeout)
        (args.dir / CLUSTER_FILE).unlink(missing_ok=True)
        print(f"stopped {len(services)} processes of the mesh in {args.dir}")
        return 0

    threads = None if args.threads_per_agent == "auto" else int(args.threads_per_agent)
    try:
        mesh = LocalMesh(
            agents=args.agents,
            run_dir=args.dir,
            base_port=args.base_port,
            threads=threads,
            agent_cpu_quota=args.agent_cpu_quota,
            planner=not args.no_planner,
            heartbeat_interval_s=args.heartbeat_interval,
        )
    except MeshError as error:
        print(f"pac cluster up: {error}", file=sys.stderr)
        return 1
    try:
        mesh.up()
    except (MeshError, OSError) as error:
        mesh.down()
        print(f"pac cluster up: {error}", file=sys.stderr)
        return 1
    capped = f", at most {args.agent_cpu_quota:g} CPUs" if args.agent_cpu_quota else ""
    print(
        f"mesh up in {mesh.run_dir}: {args.agents} agents registered, "
        f"{mesh.threads} torch threads each{capped}"
    )
    for service in mesh.services.values():
        print("  " + service.describe())
    print(f"REST API {mesh.rest_url}/docs; join token in {mesh.token_file}")
    print(
        f"next: pac status --cluster {mesh.run_dir}   stop: pac cluster down --dir {mesh.run_dir}",
        flush=True,
    )
    if not args.foreground:
        return 0
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    mesh.down()
    return 0
