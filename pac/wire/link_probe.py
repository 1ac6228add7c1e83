"""Measure a link between two agents: latency from empty pings, bandwidth from a payload.

The prober times round trips of the peer's ``Agent.Ping`` over the channel the mesh uses
(same security, same gRPC stack): the one-way latency is half the median empty round
trip; the bandwidth is the payload's bytes over its median round trip less the empty one.
What the planner gets is what a tensor message of that size meets on this link.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import grpc

from protos.v1 import agent_pb2, agent_pb2_grpc

DEFAULT_PAYLOAD_BYTES = 1 << 20
DEFAULT_REPEATS = 3
# A round trip can never be faster than this many seconds; keeps a bandwidth finite.
MIN_TRANSFER_S = 1e-6


@dataclass(frozen=True)
class LinkMeasurement:
    """One link as measured from one end: one-way latency (s), bandwidth (bytes/s)."""

    peer: str
    latency_s: float
    bandwidth_bps: float


async def _round_trip(
    stub: agent_pb2_grpc.AgentStub,
    payload: bytes,
    metadata: tuple[tuple[str, str], ...],
    timeout: float,
) -> float:
    started = time.perf_counter()
    reply = await stub.Ping(agent_pb2.PingRequest(payload=payload), metadata=metadata,
                            timeout=timeout)
    elapsed = time.perf_counter() - started
    if reply.received_bytes != len(payload):
        raise RuntimeError(
            f"the peer acknowledged {reply.received_bytes} of {len(payload)} payload bytes"
        )
    return elapsed


async def probe_link(
    channel: grpc.aio.Channel,
    peer: str,
    metadata: tuple[tuple[str, str], ...] = (),
    payload_bytes: int = DEFAULT_PAYLOAD_BYTES,
    repeats: int = DEFAULT_REPEATS,
    timeout: float = 30.0,
) -> LinkMeasurement:
    """Latency and bandwidth to the agent behind ``channel`` (named ``peer``)."""
    if payload_bytes < 1 or repeats < 1:
        raise ValueError(
            f"a link probe needs a payload and repetitions, got {payload_bytes} bytes x "
            f"{repeats}"
        )
    stub = agent_pb2_grpc.AgentStub(channel)
    payload = bytes(payload_bytes)
    # One untimed warm-up of each: the connection and the peer's first call cost extra.
    await _round_trip(stub, b"", metadata, timeout)
    await _round_trip(stub, payload, metadata, timeout)
    empty = statistics.median(
        [await _round_trip(stub, b"", metadata, timeout) for _ in range(repeats)]
    )
    full = statistics.median(
        [await _round_trip(stub, payload, metadata, timeout) for _ in range(repeats)]
    )
    transfer = max(full - empty, MIN_TRANSFER_S)
    return LinkMeasurement(peer, empty / 2, payload_bytes / transfer)
