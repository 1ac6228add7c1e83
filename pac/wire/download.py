"""Tensors that arrive as a server stream of frames (header, data, trailer), e.g. an
agent's ExportAdapters: reassembled into one buffer, verified, decoded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import torch

from pac.wire.chunking import Reassembly, data_payload, parse_frame
from pac.wire.codec import decode
from pac.wire.errors import MalformedMessage
from protos.v1 import tensors_pb2


async def receive_frames(frames: AsyncIterator[bytes]) -> dict[str, torch.Tensor]:
    """The tensors of one framed message (raises MalformedMessage / ChecksumMismatch)."""
    return (await receive_message(frames))[0]


async def receive_message(
    frames: AsyncIterator[bytes],
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and string metadata of one framed message."""
    assembly: Reassembly | None = None
    trailer: tensors_pb2.TensorTrailer | None = None
    async for frame in frames:
        payload = data_payload(frame) if assembly is not None else None
        if payload is not None and assembly is not None:
            assembly.add(payload)
            continue
        chunk = parse_frame(frame)
        part = chunk.WhichOneof("part")
        if part == "header":
            assembly = Reassembly(chunk.header.total_size)
        elif part == "data" and assembly is not None:
            assembly.add(memoryview(chunk.data))
        elif part == "trailer":
            trailer = chunk.trailer
        else:
            raise MalformedMessage(f"unexpected {part or 'empty'} frame in a tensor stream")
    if assembly is None:
        raise MalformedMessage("the stream carried no header")
    tensors, metadata = decode(assembly.finish(trailer))
    return {name: t.clone() for name, t in tensors.items()}, dict(metadata)


async def download(
    channel: grpc.aio.Channel,
    method: str,
    request: bytes,
    metadata: tuple[tuple[str, str], ...] = (),
) -> dict[str, torch.Tensor]:
    """Call a unary-request, framed-stream-response ``method`` and decode its message."""
    return (await download_message(channel, method, request, metadata))[0]


async def download_message(
    channel: grpc.aio.Channel,
    method: str,
    request: bytes,
    metadata: tuple[tuple[str, str], ...] = (),
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """:func:`download`, with the message's string metadata."""
    call = channel.unary_stream(method, request_serializer=None, response_deserializer=None)
    return await receive_message(call(request, metadata=metadata).__aiter__())
