"""``pac status``: the mesh's agents and jobs, as tables."""

from __future__ import annotations

import argparse

from coordinator.commands.options import add_connection_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser)
    parser.add_argument("--include-lost", action="store_true", help="list lost agents too")


def run(args: argparse.Namespace) -> int:
    import sys

    import grpc

    from coordinator.client import (
        ClientSetupError,
        agent_rows,
        connect,
        describe_rpc_error,
        job_rows,
        table,
    )
    from protos.v1 import coordinator_pb2 as pb

    try:
        connection = connect(args)
    except (ClientSetupError, OSError) as error:
        print(f"pac status: {error}", file=sys.stderr)
        return 2
    try:
        agents = connection.coordinator.ListAgents(
            pb.ListAgentsRequest(include_lost=args.include_lost),
            metadata=connection.metadata,
            timeout=10,
        ).agents
        jobs = connection.job_list.ListJobs(
            pb.ListJobsRequest(), metadata=connection.metadata, timeout=10
        ).jobs
    except grpc.RpcError as error:
        print(f"pac status: {describe_rpc_error(error, connection.address)}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    print(f"coordinator {connection.address}: {len(agents)} agents, {len(jobs)} jobs\n")
    print(table(*agent_rows(agents)) if agents else "no agents registered")
    print()
    print(table(*job_rows(jobs)) if jobs else "no jobs")
    return 0
