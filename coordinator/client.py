"""What the client commands (`pac submit`, `pac status`, `pac jobs`, `pac cancel`) share:
how to reach the coordinator, and how to print agents and jobs."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from coordinator.commands.options import DEFAULT_COORDINATOR
from pac.wire.auth import read_join_token, token_metadata
from pac.wire.channel import CHANNEL_OPTIONS, TransportSecurity
from protos.v1 import coordinator_pb2 as pb
from protos.v1 import coordinator_pb2_grpc as pb_grpc


class ClientSetupError(ValueError):
    """The connection flags do not say how to reach the coordinator."""


@dataclass
class Connection:
    """A channel to the coordinator and the metadata every call carries."""

    channel: grpc.Channel
    metadata: tuple[tuple[str, str], ...]
    address: str

    @property
    def coordinator(self) -> pb_grpc.CoordinatorStub:
        return pb_grpc.CoordinatorStub(self.channel)

    @property
    def job_list(self) -> pb_grpc.JobListStub:
        return pb_grpc.JobListStub(self.channel)

    def close(self) -> None:
        self.channel.close()


def connect(args: argparse.Namespace) -> Connection:
    """Open a channel from the flags (or a cluster directory's cluster.json)."""
    address = args.coordinator
    token_file = args.join_token_file
    insecure = args.insecure
    if args.cluster is not None:
        described = args.cluster / "cluster.json"
        if not described.is_file():
            raise ClientSetupError(
                f"{described} does not exist: is the cluster up (pac cluster up --dir ...)?"
            )
        cluster = json.loads(described.read_text())
        address = address or cluster["coordinator"]["address"]
        token_file = token_file or cluster["join_token_file"]
        insecure = insecure or cluster.get("insecure", True)
    security = TransportSecurity(
        cert=Path(args.tls_cert) if args.tls_cert else None,
        key=Path(args.tls_key) if args.tls_key else None,
        ca=Path(args.tls_ca) if args.tls_ca else None,
        insecure=insecure,
    )
    token = read_join_token(token_file)
    if not token:
        raise ClientSetupError(
            "no join token: pass --join-token-file, set PAC_JOIN_TOKEN or use --cluster RUN_DIR"
        )
    address = address or DEFAULT_COORDINATOR
    credentials = security.channel_credentials()
    if credentials is None:
        channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    else:
        channel = grpc.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
    return Connection(channel, token_metadata(token), address)


def describe_rpc_error(error: grpc.RpcError, address: str) -> str:
    code = error.code()
    details = error.details()
    if code == grpc.StatusCode.UNAVAILABLE:
        return f"cannot reach the coordinator at {address} ({details}): is it running?"
    return f"{code.name.lower()}: {details}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table, columns as wide as their widest cell."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def job_rows(jobs: Sequence[pb.Job]) -> tuple[list[str], list[list[object]]]:
    from coordinator.job_messages import state_name

    headers = ["JOB", "STATE", "EPOCH", "STEP", "LOSS", "TECHNIQUE", "TASK", "MODEL", "REASON"]
    rows: list[list[object]] = []
    for job in jobs:
        rows.append(
            [
                job.job_id,
                state_name(job.state),
                f"{job.epoch}/{job.spec.training.epochs}",
                f"{job.step}/{job.total_steps}",
                f"{job.loss:.4f}",
                job.spec.technique,
                job.spec.task.kind,
                Path(job.spec.model_dir).name,
                job.error,
            ]
        )
    return headers, rows


def agent_rows(agents: Sequence[pb.AgentInfo]) -> tuple[list[str], list[list[object]]]:
    headers = [
        "AGENT",
        "STATE",
        "ADDRESS",
        "DEVICE",
        "CORES",
        "THREADS",
        "MEMORY",
        "HEARTBEAT",
        "JOB",
    ]
    now = time.time()
    names = {
        pb.AGENT_STATE_ALIVE: "alive",
        pb.AGENT_STATE_LOST: "lost",
        pb.AGENT_STATE_DRAINING: "draining",
    }
    rows: list[list[object]] = []
    for agent in agents:
        profile = agent.profile
        rows.append(
            [
                agent.name,
                names.get(agent.state, "?"),
                agent.address,
                profile.accelerator or "?",
                profile.cpu_cores,
                profile.threads,
                f"{profile.memory_bytes / 2**30:.1f} GiB",
                f"{max(0.0, now - agent.last_heartbeat_unix):.1f} s ago",
                agent.job_id or "-",
            ]
        )
    return headers, rows
