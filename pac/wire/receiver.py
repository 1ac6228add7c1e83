"""The receiving end of SendTensors: a stream of frames in, a TensorMessage in the mailbox.

The servicer method ``TensorReceiver.receive`` is registered with an identity request
deserializer, so it sees each frame as ``bytes``. Every failure becomes a gRPC status
(``WireError.code``); nothing raises out of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import grpc
import torch

from pac.wire.chunking import Reassembly, data_payload, parse_frame
from pac.wire.codec import MAX_HEADER_BYTES, decode
from pac.wire.compression import CAST_METADATA_KEY, decompress
from pac.wire.errors import MalformedMessage, UnknownJob, WireError
from pac.wire.limits import InFlightLedger, WireLimits
from pac.wire.mailbox import Mailbox, TensorMessage
from pac.wire.observer import NullObserver, TransferObserver
from pac.wire.refusal import refuse_stream
from protos.v1 import tensors_pb2

# Decoding is views only, but casting compressed tensors back is compute: above this many
# bytes it runs in a thread so the event loop keeps serving other streams.
_THREAD_DECODE_BYTES = 8 << 20


class TensorReceiver:
    """Receives tensor messages into ``mailbox``.

    ``accepts_job(job_id)`` says whether this process hosts the job (else NOT_FOUND).
    ``on_message``, if given, is called with each delivered message instead of filing it
    in the mailbox (the coordinator uses it to collect outputs).
    """

    def __init__(
        self,
        mailbox: Mailbox,
        limits: WireLimits | None = None,
        accepts_job: Callable[[str], bool] = lambda job_id: True,
        observer: TransferObserver | None = None,
    ) -> None:
        self.mailbox = mailbox
        self.limits = limits or WireLimits()
        self.ledger = InFlightLedger(self.limits)
        self.accepts_job = accepts_job
        self.observer: TransferObserver = observer or NullObserver()

    async def receive(
        self, frames: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> tensors_pb2.TensorAck:
        """SendTensors: reassemble, verify, decode and file one message."""
        try:
            return await self._receive(frames, context.peer())
        except WireError as error:
            await refuse_stream(frames, context, error.code, str(error))
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug, not bad input: still a status, never a crash
            await context.abort(
                grpc.StatusCode.INTERNAL,
                f"receiving tensors failed: {type(error).__name__}: {error}",
            )
        raise AssertionError("unreachable: abort raises")

    async def _receive(
        self, frames: AsyncIterator[bytes], transport_peer: str
    ) -> tensors_pb2.TensorAck:
        started = time.perf_counter()
        iterator = frames.__aiter__()
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            raise MalformedMessage("empty stream: the first chunk must be a header") from None
        head = parse_frame(first)
        if head.WhichOneof("part") != "header":
            raise MalformedMessage("the first chunk of a tensor stream must be a header")
        header = head.header
        routing = header.routing
        if header.checksum_algorithm != tensors_pb2.CHECKSUM_ALGORITHM_CRC32:
            raise MalformedMessage(
                f"unsupported checksum algorithm {header.checksum_algorithm}; use CRC32"
            )
        if not self.accepts_job(routing.job_id):
            raise UnknownJob(f"this agent hosts no job {routing.job_id!r}; open it first")
        peer = routing.sender or transport_peer
        self.ledger.reserve(peer, header.total_size)
        try:
            buffer = await self._reassemble(iterator, header.total_size)
            tensors, metadata = await self._decode(buffer)
        finally:
            self.ledger.release(peer, header.total_size)
        message = TensorMessage(routing, tensors, metadata, header.total_size)
        self.mailbox.put(message)
        self.observer.received(peer, header.total_size, len(tensors), time.perf_counter() - started)
        return tensors_pb2.TensorAck(
            routing=routing, received_bytes=header.total_size, tensor_count=len(tensors)
        )

    async def _reassemble(self, iterator: AsyncIterator[bytes], total_size: int) -> memoryview:
        assembly = Reassembly(total_size)
        trailer: tensors_pb2.TensorTrailer | None = None
        async for frame in iterator:
            if trailer is not None:
                raise MalformedMessage("a chunk arrived after the trailer")
            if len(frame) > self.limits.max_chunk_bytes + 16:
                raise MalformedMessage(
                    f"a chunk of {len(frame)} bytes exceeds {self.limits.max_chunk_bytes}"
                )
            payload = data_payload(frame)
            if payload is not None:
                assembly.add(payload)
                continue
            chunk = parse_frame(frame)
            part = chunk.WhichOneof("part")
            if part == "data":
                assembly.add(memoryview(chunk.data))
            elif part == "trailer":
                trailer = chunk.trailer
            else:
                raise MalformedMessage(f"unexpected {part or 'empty'} chunk inside a stream")
        return assembly.finish(trailer)

    async def _decode(self, buffer: memoryview) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        def work() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
            tensors, metadata = decode(buffer)
            return decompress(tensors, metadata), metadata

        casts = CAST_METADATA_KEY in _header_text(buffer)
        if casts and len(buffer) > _THREAD_DECODE_BYTES:
            return await asyncio.to_thread(work)
        return work()


def _header_text(buffer: memoryview) -> str:
    """The raw header text (cheap: headers are small), to decide where to decode."""
    if len(buffer) < 8:
        return ""
    length = min(int.from_bytes(buffer[:8], "little"), len(buffer) - 8, MAX_HEADER_BYTES)
    return bytes(buffer[8 : 8 + length]).decode("utf-8", errors="replace")
