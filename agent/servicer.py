"""The gRPC face of the agent: protobuf in, ``AgentRuntime`` calls, protobuf out.

Every method maps the runtime's and the wire's errors to their statuses (``_status``), so
bad input is always a clear status and the agent keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import torch

from agent.errors import AgentError, BadRequest, NotYetSupported
from agent.profile_memo import ProfileAsk
from agent.runtime import AgentRuntime
from pac.data.encoding import fingerprint_key
from pac.pipeline.worker import StepResult
from pac.wire.chunking import ChunkStream
from pac.wire.codec import encode
from pac.wire.errors import WireError
from pac.wire.limits import MAX_CHUNK_BYTES
from pac.wire.link_probe import DEFAULT_PAYLOAD_BYTES, DEFAULT_REPEATS, LinkMeasurement
from pac.wire.receiver import TensorReceiver
from protos.v1 import agent_pb2, agent_pb2_grpc, tensors_pb2

T = TypeVar("T")

# probe_links(peer addresses, payload bytes, repeats) -> one measurement per peer
LinkProber = Callable[[list[str], int, int], Awaitable[list[LinkMeasurement]]]
# A probe payload travels as one unary message: at most one chunk of the tensor wire.
MAX_PROBE_BYTES = MAX_CHUNK_BYTES
# How long RestoreState waits for the state's message (the coordinator sends it first).
RESTORE_TIMEOUT_S = 60.0


async def _answer(context: grpc.aio.ServicerContext, call: Callable[[], Awaitable[T]]) -> T:
    """Run ``call``; turn every known error into its status, anything else into INTERNAL."""
    try:
        return await call()
    except grpc.aio.AbortError:
        raise  # already a status (the tensor receiver aborts by itself)
    except (AgentError, WireError) as error:
        await context.abort(error.code, str(error))
    except TimeoutError as error:
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(error))
    except asyncio.CancelledError:
        raise
    except Exception as error:
        await context.abort(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
    raise AssertionError("unreachable: abort raises")


class AgentServicer(agent_pb2_grpc.AgentServicer):
    def __init__(
        self,
        runtime: AgentRuntime,
        receiver: TensorReceiver,
        describe: Callable[[], agent_pb2.DeviceProfile],
        shutdown: Callable[[float], None],
        probe_links: LinkProber,
    ) -> None:
        self.runtime = runtime
        self.receiver = receiver
        self._describe = describe
        self._shutdown = shutdown
        self._probe_links = probe_links

    async def Describe(
        self, request: agent_pb2.DescribeRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.DeviceProfile:
        return self._describe()

    async def Ping(
        self, request: agent_pb2.PingRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.PingReply:
        return agent_pb2.PingReply(received_bytes=len(request.payload))

    async def ProbeLinks(
        self, request: agent_pb2.ProbeLinksRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ProbeLinksReply:
        async def call() -> agent_pb2.ProbeLinksReply:
            if not request.peers:
                raise BadRequest("ProbeLinks needs at least one peer address")
            if request.payload_bytes > MAX_PROBE_BYTES:
                raise BadRequest(
                    f"a probe payload of {request.payload_bytes} bytes is over the limit of "
                    f"{MAX_PROBE_BYTES}; probe with a smaller payload"
                )
            links = await self._probe_links(
                list(request.peers),
                request.payload_bytes or DEFAULT_PAYLOAD_BYTES,
                request.repeats or DEFAULT_REPEATS,
            )
            return agent_pb2.ProbeLinksReply(
                links=[
                    agent_pb2.LinkMeasurement(
                        peer=link.peer, latency_s=link.latency_s, bandwidth_bps=link.bandwidth_bps
                    )
                    for link in links
                ]
            )

        return await _answer(context, call)

    async def Profile(
        self, request: agent_pb2.ProfileRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ProfileReply:
        async def call() -> agent_pb2.ProfileReply:
            if request.job_id:
                self.runtime.job(request.job_id)
            if not request.model_dir:
                raise BadRequest("Profile needs a model_dir on the agent")
            async with self.runtime.work():
                ask = ProfileAsk(
                    Path(request.model_dir).resolve(),
                    request.layer_start,
                    request.layer_end,
                    request.batch_size or 1,
                    request.seq_len or 128,
                    request.repeats or 3,
                    request.side_network,
                    request.second_batch_size,
                    request.backward_technique,
                    request.packed_backbone,
                    request.pool_agents,
                )
                measured, age_s = await self.runtime.profile(ask, request.max_age_s)
            return agent_pb2.ProfileReply(
                device=self._describe(),
                embed_seconds=measured.embed_seconds,
                side_seconds=measured.side_seconds,
                second_batch_seconds=measured.second_batch_seconds,
                side_second_batch_seconds=measured.side_second_batch_seconds,
                age_s=age_s,
                layers=[
                    agent_pb2.LayerProfile(
                        index=t.index,
                        forward_seconds=t.forward_seconds,
                        backward_seconds=(
                            measured.backward_seconds[i] if measured.backward_seconds else 0.0
                        ),
                        parameter_bytes=t.parameter_bytes,
                        activation_bytes=t.activation_bytes,
                    )
                    for i, t in enumerate(measured.layers)
                ],
            )

        return await _answer(context, call)

    async def OpenJob(
        self, request: agent_pb2.OpenJobRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.OpenJobReply:
        async def call() -> agent_pb2.OpenJobReply:
            self.runtime.open_job(request.job_id, request.settings_json)
            await self.runtime.start_training(request.job_id)
            return agent_pb2.OpenJobReply()

        return await _answer(context, call)

    async def LoadStage(
        self, request: agent_pb2.LoadStageRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.LoadStageReply:
        async def call() -> agent_pb2.LoadStageReply:
            self.runtime.job(request.job_id)
            if request.WhichOneof("source") != "model_dir":
                raise NotYetSupported("streamed weights are not supported yet: give model_dir")
            async with self.runtime.work():
                stage = await self.runtime.load_stage(
                    request.job_id,
                    request.stage,
                    Path(request.model_dir),
                    request.layer_start,
                    request.layer_end,
                    request.expected_sha256,
                )
            return agent_pb2.LoadStageReply(
                parameter_bytes=stage.parameter_bytes,
                load_seconds=stage.load_seconds,
                weights_sha256=stage.weights_sha256,
            )

        return await _answer(context, call)

    async def SendTensors(
        self,
        request_iterator: AsyncIterator[bytes],  # type: ignore[override]
        context: grpc.aio.ServicerContext,
    ) -> tensors_pb2.TensorAck:
        # Frames arrive as bytes (identity deserializer, see pac.wire.service).
        async def call() -> tensors_pb2.TensorAck:
            async with self.runtime.work():
                ack = await self.receiver.receive(request_iterator, context)
                if ack.routing.kind == tensors_pb2.TENSOR_KIND_CACHE_ENTRY:
                    # Stored before the ack: when a sender's Redistribute returns, its
                    # entries are in their owners' caches.
                    await self.runtime.absorb_cache_entries()
            self.runtime.metrics.mailbox_bytes.set(self.runtime.mailbox.bytes_waiting())
            return ack

        return await _answer(context, call)

    async def RunStep(
        self, request: agent_pb2.RunStepRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.RunStepReply:
        async def call() -> agent_pb2.RunStepReply:
            session = self.runtime.job(request.job_id)
            if session.training is not None and not request.instructions:
                async with self.runtime.work():
                    step = await self.runtime.run_training_step(
                        request.job_id, request.step, request.recv_timeout_s or 300.0
                    )
                return agent_pb2.RunStepReply(
                    loss_sum=step.loss_sum, loss_terms=step.count, samples=step.samples
                )
            async with self.runtime.work():
                results = await self.runtime.run_step(
                    request.job_id,
                    request.step,
                    request.instructions,
                    request.recv_timeout_s or 60.0,
                )
            reply = agent_pb2.RunStepReply(
                results=[
                    agent_pb2.InstructionResult(
                        action=r.action,  # type: ignore[arg-type]
                        micro_batch=r.micro_batch,
                        seconds=r.seconds,
                        bytes=r.nbytes,
                    )
                    for r in results
                ]
            )
            reply.compute_seconds = sum(
                r.seconds for r in results if r.action == agent_pb2.ACTION_FORWARD
            )
            return reply

        return await _answer(context, call)

    async def RunSteps(
        self, request: agent_pb2.RunStepsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[agent_pb2.StepReport]:
        steps = self.runtime.run_training_steps(
            request.job_id, request.first_step, request.steps, request.recv_timeout_s or 300.0
        )

        async def next_step() -> tuple[int, StepResult] | None:
            try:
                return await anext(steps)
            except StopAsyncIteration:
                return None

        async with contextlib.aclosing(steps), self.runtime.work():
            while (item := await _answer(context, next_step)) is not None:
                step, result = item
                yield agent_pb2.StepReport(
                    step=step,
                    loss_sum=result.loss_sum,
                    loss_terms=result.count,
                    samples=result.samples,
                )

    async def Redistribute(
        self, request: agent_pb2.RedistributeRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.RedistributeReply:
        async def call() -> agent_pb2.RedistributeReply:
            self.runtime.job(request.job_id)
            if not request.owners_json:
                raise BadRequest("Redistribute needs owners_json (sample fingerprint -> agent)")
            async with self.runtime.work():
                sent_bytes, entries = await self.runtime.redistribute(
                    request.job_id, json.loads(request.owners_json)
                )
            return agent_pb2.RedistributeReply(bytes_sent=sent_bytes, entries_sent=entries)

        return await _answer(context, call)

    async def ExportAdapters(  # type: ignore[override]
        self,
        request: agent_pb2.ExportAdaptersRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        async with contextlib.AsyncExitStack() as held:

            async def call() -> dict[str, torch.Tensor]:
                exported = self.runtime.exported_adapters(request.job_id, request.optimizer_state)
                return await held.enter_async_context(exported)

            # Sent as they lie: the job's steps wait until the last frame has gone.
            for frame in self._frames(request.job_id, await _answer(context, call), {}):
                yield frame

    def _frames(
        self, job_id: str, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
    ) -> Iterator[bytes]:
        """``tensors`` and ``metadata`` as the frames of one tensor message of the job."""
        routing = tensors_pb2.Routing(
            job_id=job_id, kind=tensors_pb2.TENSOR_KIND_ADAPTER, sender=self.runtime.name
        )
        return ChunkStream(encode(tensors, metadata), routing).frames()

    async def RestoreState(
        self, request: agent_pb2.RestoreStateRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.RestoreStateReply:
        async def call() -> agent_pb2.RestoreStateReply:
            async with self.runtime.work():
                loaded, states, held = await self.runtime.restore_state(
                    request.job_id, request.step, request.rebuild_cache, RESTORE_TIMEOUT_S
                )
            return agent_pb2.RestoreStateReply(
                parameters=loaded,
                optimizer_states=states,
                cached_sample_keys=[fingerprint_key(sample) for sample in held],
            )

        return await _answer(context, call)

    async def ReadCheckpoint(  # type: ignore[override]
        self,
        request: agent_pb2.ReadCheckpointRequest,
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[bytes]:
        async def call() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
            if not request.job_id:
                raise BadRequest("ReadCheckpoint needs a job_id")
            return await self.runtime.read_checkpoint(request.job_id)

        tensors, metadata = await _answer(context, call)
        for frame in self._frames(request.job_id, tensors, metadata):
            yield frame

    async def ReleaseBackbone(
        self, request: agent_pb2.ReleaseBackboneRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ReleaseBackboneReply:
        async def call() -> agent_pb2.ReleaseBackboneReply:
            if self.runtime.job(request.job_id).training is not None:
                async with self.runtime.work():
                    freed, before, after = await self.runtime.enter_cache_phase(request.job_id)
                self.runtime.metrics.rss.set(after)
                return agent_pb2.ReleaseBackboneReply(
                    freed_bytes=freed, rss_before_bytes=before, rss_after_bytes=after
                )
            return agent_pb2.ReleaseBackboneReply(
                freed_bytes=self.runtime.release_backbone(request.job_id)
            )

        return await _answer(context, call)

    async def CloseJob(
        self, request: agent_pb2.CloseJobRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.CloseJobReply:
        async def call() -> agent_pb2.CloseJobReply:
            await self.runtime.close_job(request.job_id, request.keep_cache)
            return agent_pb2.CloseJobReply()

        return await _answer(context, call)

    async def Drain(
        self, request: agent_pb2.DrainRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.DrainReply:
        left = await self.runtime.drain(request.timeout_s or None)
        return agent_pb2.DrainReply(in_flight=left)

    async def Shutdown(
        self, request: agent_pb2.ShutdownRequest, context: grpc.aio.ServicerContext
    ) -> agent_pb2.ShutdownReply:
        # Answer first, then stop: the server's stop would cancel this very call.
        with contextlib.suppress(Exception):
            self._shutdown(request.timeout_s or 30.0)
        return agent_pb2.ShutdownReply()
