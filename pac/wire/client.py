"""The sending end: ``send_tensors(channel, tensors, routing)``.

Frames are produced lazily while gRPC sends (one 1 MiB copy each), so a sender never holds
more than a few chunks beyond its own tensors.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping

import grpc
import torch

from pac.wire.auth import token_metadata
from pac.wire.chunking import ChunkStream
from pac.wire.codec import encode
from pac.wire.compression import compress
from pac.wire.limits import DEFAULT_CHUNK_BYTES
from pac.wire.observer import NullObserver, TransferObserver
from protos.v1 import tensors_pb2

SEND_TENSORS_METHOD = "/pac.v1.Agent/SendTensors"


def routing_metadata(routing: tensors_pb2.Routing) -> dict[str, str]:
    """Routing as safetensors ``__metadata__`` strings, so a saved blob says what it is."""
    return {
        "pac.job_id": routing.job_id,
        "pac.step": str(routing.step),
        "pac.micro_batch": str(routing.micro_batch),
        "pac.stage": str(routing.stage),
        "pac.kind": tensors_pb2.TensorKind.Name(routing.kind),
        "pac.sender": routing.sender,
    }


async def send_tensors(
    channel: grpc.aio.Channel,
    tensors: Mapping[str, torch.Tensor],
    routing: tensors_pb2.Routing,
    *,
    token: str | None = None,
    wire_dtype: torch.dtype | None = None,
    chunk_size: int = DEFAULT_CHUNK_BYTES,
    timeout: float | None = None,
    peer: str = "",
    observer: TransferObserver | None = None,
) -> tensors_pb2.TensorAck:
    """Send ``tensors`` (any shapes, safetensors dtypes) as one message to the SendTensors
    service at ``channel``; returns the receiver's ack after it verified and filed them.

    ``wire_dtype`` (float16/bfloat16) casts float32 tensors for the trip; the receiver
    casts them back. Raises ``grpc.aio.AioRpcError`` with the receiver's status on refusal.
    """
    started = time.perf_counter()
    to_send, cast_metadata = compress(tensors, wire_dtype)
    message = encode(to_send, {**routing_metadata(routing), **cast_metadata})
    stream = ChunkStream(message, routing, chunk_size)

    async def frames() -> AsyncIterator[bytes]:
        for frame in stream.frames():
            yield frame

    call = channel.stream_unary(
        SEND_TENSORS_METHOD,
        request_serializer=None,
        response_deserializer=tensors_pb2.TensorAck.FromString,
    )
    ack: tensors_pb2.TensorAck = await call(
        frames(), timeout=timeout, metadata=token_metadata(token)
    )
    (observer or NullObserver()).sent(
        peer, message.total_size, len(to_send), time.perf_counter() - started
    )
    return ack
