"""Bad input gets a clear status, and the agent keeps serving: a good call works after each."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import grpc
import torch

from agent.server import AgentServer
from pac.wire.chunking import ChunkStream
from pac.wire.client import SEND_TENSORS_METHOD, send_tensors
from pac.wire.codec import EncodedMessage, encode
from pac.wire.limits import MiB, WireLimits
from protos.v1 import agent_pb2, tensors_pb2

ROUTING = tensors_pb2.Routing(
    job_id="j", step=1, kind=tensors_pb2.TENSOR_KIND_ACTIVATION, sender="tester"
)


def raw_blob(blob: bytes) -> EncodedMessage:
    return EncodedMessage([memoryview(blob)], len(blob), [])


def frames_of(message: EncodedMessage, routing: tensors_pb2.Routing = ROUTING) -> list[bytes]:
    return list(ChunkStream(message, routing, chunk_size=1024).frames())


async def send_frames(agent: AgentServer, frames: list[bytes], token: str | None) -> None:
    async def iterate() -> AsyncIterator[bytes]:
        for frame in frames:
            yield frame

    call = agent.peers.get(agent.address).stream_unary(
        SEND_TENSORS_METHOD,
        request_serializer=None,
        response_deserializer=tensors_pb2.TensorAck.FromString,
    )
    metadata = (("x-pac-join-token", token),) if token else ()
    await call(iterate(), metadata=metadata, timeout=10)


def corrupt_header_blob() -> bytes:
    text = b'{"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]'  # unterminated
    return struct.pack("<Q", len(text)) + text + b"\0" * 8


def unknown_dtype_blob() -> bytes:
    text = json.dumps({"x": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}).encode()
    return struct.pack("<Q", len(text)) + text + b"\0" * 8


def test_each_bad_input_gets_its_status_and_the_agent_keeps_serving(
    start_agents: Any, status_of: Any, token: str, auth: Any, agent_stub: Any
) -> None:
    good = {"x": torch.arange(5000, dtype=torch.float32)}
    good_frames = frames_of(encode(good))

    async def scenario() -> None:
        limits = WireLimits(max_message_bytes=1 * MiB, max_in_flight_bytes_per_peer=2 * MiB)
        async with start_agents(1, limits=limits) as [agent]:
            agent.runtime.open_job("j")
            step = 0

            async def good_call() -> None:
                nonlocal step
                step += 1
                routing = tensors_pb2.Routing(
                    job_id="j", step=step, kind=tensors_pb2.TENSOR_KIND_ACTIVATION
                )
                ack = await send_tensors(
                    agent.peers.get(agent.address), good, routing, token=token, timeout=10
                )
                assert ack.tensor_count == 1

            await good_call()
            cases: list[tuple[str, list[bytes], str | None, grpc.StatusCode]] = [
                (
                    "truncated",
                    good_frames[:3] + good_frames[-1:],
                    token,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ),
                ("no trailer", good_frames[:-1], token, grpc.StatusCode.INVALID_ARGUMENT),
                ("data before header", good_frames[1:], token, grpc.StatusCode.INVALID_ARGUMENT),
                ("empty stream", [], token, grpc.StatusCode.INVALID_ARGUMENT),
                (
                    "garbage frame",
                    [good_frames[0], b"\xff\xff\xff"],
                    token,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ),
                ("wrong checksum", wrong_checksum(good_frames), token, grpc.StatusCode.DATA_LOSS),
                (
                    # The header declares the size and the agent refuses there; it reads the
                    # rest of the stream first, so the sender sees this status (refusal.py).
                    "over the size limit",
                    frames_of(encode({"x": torch.zeros(MiB // 2)})),
                    token,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                ),
                (
                    "corrupt safetensors header",
                    frames_of(raw_blob(corrupt_header_blob())),
                    token,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ),
                (
                    "unknown dtype",
                    frames_of(raw_blob(unknown_dtype_blob())),
                    token,
                    grpc.StatusCode.INVALID_ARGUMENT,
                ),
                ("missing join token", good_frames, None, grpc.StatusCode.UNAUTHENTICATED),
                ("wrong join token", good_frames, "nope", grpc.StatusCode.UNAUTHENTICATED),
                (
                    "unknown job",
                    frames_of(encode(good), tensors_pb2.Routing(job_id="nope")),
                    token,
                    grpc.StatusCode.NOT_FOUND,
                ),
            ]
            for name, frames, call_token, expected in cases:
                got = await status_of(send_frames(agent, frames, call_token))
                assert got == expected, f"{name}: {got} != {expected}"
                await good_call()

            async with agent_stub(agent.address) as stub:
                for name, call, expected in [
                    (
                        "RunStep unknown job",
                        stub.RunStep(agent_pb2.RunStepRequest(job_id="nope"), metadata=auth),
                        grpc.StatusCode.NOT_FOUND,
                    ),
                    (
                        "LoadStage unknown job",
                        stub.LoadStage(
                            agent_pb2.LoadStageRequest(job_id="nope", model_dir="/x"), metadata=auth
                        ),
                        grpc.StatusCode.NOT_FOUND,
                    ),
                    (
                        "CloseJob unknown job",
                        stub.CloseJob(agent_pb2.CloseJobRequest(job_id="nope"), metadata=auth),
                        grpc.StatusCode.NOT_FOUND,
                    ),
                    (
                        "FORWARD without a stage",
                        stub.RunStep(
                            agent_pb2.RunStepRequest(
                                job_id="j",
                                instructions=[
                                    agent_pb2.Instruction(action=agent_pb2.ACTION_FORWARD, stage=3)
                                ],
                            ),
                            metadata=auth,
                        ),
                        grpc.StatusCode.FAILED_PRECONDITION,
                    ),
                    (
                        "RECV that never comes",
                        stub.RunStep(
                            agent_pb2.RunStepRequest(
                                job_id="j",
                                step=99,
                                recv_timeout_s=0.05,
                                instructions=[agent_pb2.Instruction(action=agent_pb2.ACTION_RECV)],
                            ),
                            metadata=auth,
                        ),
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                    ),
                    (
                        "BACKWARD not yet",
                        stub.RunStep(
                            agent_pb2.RunStepRequest(
                                job_id="j",
                                instructions=[
                                    agent_pb2.Instruction(action=agent_pb2.ACTION_BACKWARD)
                                ],
                            ),
                            metadata=auth,
                        ),
                        grpc.StatusCode.UNIMPLEMENTED,
                    ),
                    (
                        "Describe without token",
                        stub.Describe(agent_pb2.DescribeRequest()),
                        grpc.StatusCode.UNAUTHENTICATED,
                    ),
                ]:
                    got = await status_of(call)
                    assert got == expected, f"{name}: {got} != {expected}"
                    await good_call()
                profile = await stub.Describe(agent_pb2.DescribeRequest(), metadata=auth)
                assert profile.name == "agent-0" and profile.cpu_cores >= 1
                assert profile.matmul_gflops > 0 and profile.free_disk_bytes > 0
            assert agent.receiver.ledger.in_flight("tester") == 0  # every refusal released

    asyncio.run(scenario())


def wrong_checksum(frames: list[bytes]) -> list[bytes]:
    trailer = tensors_pb2.TensorChunk.FromString(frames[-1])
    trailer.trailer.checksum ^= 1
    return [*frames[:-1], trailer.SerializeToString()]


def test_in_flight_limit_per_peer_refuses_a_second_concurrent_stream(
    start_agents: Any, status_of: Any, token: str
) -> None:
    message = encode({"x": torch.zeros(200_000)})  # 800 KB

    async def scenario() -> None:
        limits = WireLimits(max_message_bytes=1 * MiB, max_in_flight_bytes_per_peer=1 * MiB)
        async with start_agents(1, limits=limits) as [agent]:
            agent.runtime.open_job("j")
            frames = frames_of(message)
            release = asyncio.Event()

            async def slow() -> AsyncIterator[bytes]:
                yield frames[0]
                await release.wait()  # hold the reservation open
                for frame in frames[1:]:
                    yield frame

            call = agent.peers.get(agent.address).stream_unary(
                SEND_TENSORS_METHOD,
                request_serializer=None,
                response_deserializer=tensors_pb2.TensorAck.FromString,
            )
            first = asyncio.ensure_future(call(slow(), metadata=(("x-pac-join-token", token),)))
            while agent.receiver.ledger.in_flight("tester") == 0:
                await asyncio.sleep(0.01)
            second = frames_of(
                message,
                tensors_pb2.Routing(
                    job_id="j", step=2, kind=tensors_pb2.TENSOR_KIND_ACTIVATION, sender="tester"
                ),
            )
            got = await status_of(send_frames(agent, second, token))
            assert got == grpc.StatusCode.RESOURCE_EXHAUSTED
            release.set()
            ack = await first
            assert ack.received_bytes == message.total_size

    asyncio.run(scenario())
