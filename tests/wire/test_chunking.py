"""Frames are TensorChunk protobufs; reassembly checks size and checksum before decoding."""

from __future__ import annotations

import pytest
import torch

from pac.wire.chunking import ChunkStream, Reassembly, data_payload, parse_frame
from pac.wire.codec import decode, encode
from pac.wire.errors import ChecksumMismatch, MalformedMessage
from protos.v1 import tensors_pb2

ROUTING = tensors_pb2.Routing(
    job_id="j", step=3, micro_batch=1, stage=2, kind=tensors_pb2.TENSOR_KIND_ACTIVATION, sender="a"
)


def reassemble(frames: list[bytes]) -> memoryview:
    header = parse_frame(frames[0]).header
    assembly = Reassembly(header.total_size)
    trailer = None
    for frame in frames[1:]:
        payload = data_payload(frame)
        if payload is not None:
            assembly.add(payload)
        else:
            trailer = parse_frame(frame).trailer
    return assembly.finish(trailer)


@pytest.mark.parametrize("chunk_size", [1, 7, 4096, 1 << 20])
def test_frames_reassemble_across_segment_boundaries(chunk_size: int) -> None:
    tensors = {
        "a": torch.arange(1000, dtype=torch.float32),
        "b": torch.ones(3, dtype=torch.int8),
        "c": torch.zeros(0),
    }
    message = encode(tensors)
    stream = ChunkStream(message, ROUTING, chunk_size=chunk_size)
    frames = list(stream.frames())
    expected_chunks = -(-message.total_size // chunk_size)
    assert len(frames) == expected_chunks + 2 and stream.chunk_count == expected_chunks
    decoded, _ = decode(reassemble(frames))
    assert torch.equal(decoded["a"], tensors["a"]) and torch.equal(decoded["b"], tensors["b"])


def test_hand_built_frames_are_the_protobuf_encoding() -> None:
    stream = ChunkStream(encode({"x": torch.arange(300, dtype=torch.int16)}), ROUTING, 256)
    frames = list(stream.frames())
    header = parse_frame(frames[0])
    assert header.header.routing == ROUTING
    assert header.header.checksum_algorithm == tensors_pb2.CHECKSUM_ALGORITHM_CRC32
    for frame in frames[1:-1]:
        parsed = parse_frame(frame)  # protobuf reads our hand-made data frames
        assert parsed.WhichOneof("part") == "data"
        assert bytes(data_payload(frame) or b"") == parsed.data
        assert tensors_pb2.TensorChunk(data=parsed.data).SerializeToString() == frame
    assert parse_frame(frames[-1]).trailer.chunk_count == len(frames) - 2


def test_truncated_stream_is_refused() -> None:
    frames = list(ChunkStream(encode({"x": torch.ones(100)}), ROUTING, 64).frames())
    with pytest.raises(MalformedMessage, match="truncated"):
        reassemble(frames[:-2] + frames[-1:])  # one data chunk missing
    with pytest.raises(MalformedMessage, match="without a trailer"):
        reassemble(frames[:-1])


def test_extra_bytes_and_wrong_checksum_are_refused() -> None:
    frames = list(ChunkStream(encode({"x": torch.ones(100)}), ROUTING, 64).frames())
    with pytest.raises(MalformedMessage, match="more than"):
        reassemble(frames[:-1] + frames[1:2] + frames[-1:])
    corrupted = bytearray(frames[1])
    corrupted[-1] ^= 0xFF
    with pytest.raises(ChecksumMismatch, match="CRC-32"):
        reassemble([frames[0], bytes(corrupted), *frames[2:]])


def test_chunk_size_is_bounded() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        ChunkStream(encode({}), ROUTING, chunk_size=5 << 20)
