"""``pac cancel JOB``: stop a job (a running one stops at its next step)."""

from __future__ import annotations

import argparse

from coordinator.commands.options import add_connection_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("job", help="the job's id (pac jobs lists them)")
    add_connection_arguments(parser)


def run(args: argparse.Namespace) -> int:
    import sys

    import grpc

    from coordinator.client import ClientSetupError, connect, describe_rpc_error
    from coordinator.job_messages import state_name
    from protos.v1 import coordinator_pb2 as pb

    try:
        connection = connect(args)
    except (ClientSetupError, OSError) as error:
        print(f"pac cancel: {error}", file=sys.stderr)
        return 2
    try:
        job = connection.coordinator.CancelJob(
            pb.CancelJobRequest(job_id=args.job), metadata=connection.metadata, timeout=10
        )
    except grpc.RpcError as error:
        print(f"pac cancel: {describe_rpc_error(error, connection.address)}", file=sys.stderr)
        return 1
    finally:
        connection.close()
    state = state_name(job.state)
    if state == "cancelled":
        print(f"job {job.job_id} cancelled")
    elif job.state in (pb.JOB_STATE_DONE, pb.JOB_STATE_FAILED):
        print(f"job {job.job_id} had already ended: {state}")
    else:
        print(f"job {job.job_id} is stopping at its next step (now {state})")
    return 0
