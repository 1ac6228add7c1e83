"""A refused tensor stream is read to its end before the status goes out, so the sender
reads the refusal's status and never grpcio's INTERNAL of a write racing it (grpc 36066)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import torch

from pac.wire.chunking import ChunkStream
from pac.wire.client import SEND_TENSORS_METHOD
from pac.wire.codec import encode
from pac.wire.limits import MiB
from pac.wire.refusal import drain
from protos.v1 import tensors_pb2


@pytest.mark.parametrize(
    ("job_id", "use_mesh_token", "expected"),
    [
        ("j", False, grpc.StatusCode.UNAUTHENTICATED),
        ("no-such-job", True, grpc.StatusCode.NOT_FOUND),
    ],
)
def test_a_refused_stream_is_read_to_its_end_before_the_status(
    start_agents: Any, token: str, job_id: str, use_mesh_token: bool, expected: grpc.StatusCode
) -> None:
    # 8 MiB in 64 KiB frames: far more than HTTP/2 lets a client write ahead of a server
    # that stopped reading, so every frame leaves the sender only if the server drained.
    routing = tensors_pb2.Routing(job_id=job_id, step=1)
    frames = list(
        ChunkStream(encode({"x": torch.zeros(2 * MiB)}), routing, chunk_size=64 * 1024).frames()
    )
    sent = 0

    async def iterate() -> AsyncIterator[bytes]:
        nonlocal sent
        for frame in frames:
            sent += 1
            yield frame

    async def scenario() -> grpc.StatusCode:
        async with start_agents(1) as [agent]:
            agent.runtime.open_job("j")
            call = agent.peers.get(agent.address).stream_unary(
                SEND_TENSORS_METHOD,
                request_serializer=None,
                response_deserializer=tensors_pb2.TensorAck.FromString,
            )
            metadata = (("x-pac-join-token", token if use_mesh_token else "wrong"),)
            try:
                await call(iterate(), metadata=metadata, timeout=20)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK

    assert asyncio.run(scenario()) == expected
    assert sent == len(frames) > 100


def test_draining_stops_at_its_byte_limit() -> None:
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"x" * 1000

    read = asyncio.run(drain(endless(), limit_bytes=10_000, limit_s=30))
    assert read == 10_000
    assert pulled == 10


def test_draining_stops_at_its_time_limit_and_after_a_broken_stream() -> None:
    async def stalled() -> AsyncIterator[bytes]:
        yield b"abc"
        await asyncio.sleep(3600)
        yield b"never"

    async def broken() -> AsyncIterator[bytes]:
        yield b"abcd"
        raise ConnectionResetError("peer went away")

    assert asyncio.run(drain(stalled(), limit_bytes=MiB, limit_s=0.05)) == 3
    assert asyncio.run(drain(broken(), limit_bytes=MiB, limit_s=30)) == 4
