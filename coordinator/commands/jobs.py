"""``pac jobs``: the coordinator's jobs, as a table (``pac jobs JOB`` for one, in full)."""

from __future__ import annotations

import argparse

from coordinator.commands.options import add_connection_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", nargs="?", help="show this job in full (JSON)")
    add_connection_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import sys

    import grpc
    from google.protobuf.json_format import MessageToJson

    from coordinator.client import ClientSetupError, connect, describe_rpc_error, job_rows, table
    from protos.v1 import coordinator_pb2 as pb

    try:
        connection = connect(args)
    except (ClientSetupError, OSError) as error:
        print(f"pac jobs: {error}", file=sys.stderr)
        return 2
    try:
        if args.job:
            job = connection.coordinator.GetJob(
                pb.GetJobRequest(job_id=args.job), metadata=connection.metadata, timeout=10
            )
            print(MessageToJson(job, preserving_proto_field_name=True))
            return 0
        jobs = connection.job_list.ListJobs(
            pb.ListJobsRequest(), metadata=connection.metadata, timeout=10
        ).jobs
    except grpc.RpcError as error:
        print(f"pac jobs: {describe_rpc_error(error, connection.address)}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    print(table(*job_rows(jobs)) if jobs else "no jobs")
    return 0
