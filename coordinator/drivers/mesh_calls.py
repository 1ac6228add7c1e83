"""The coordinator's calls to the agents of one mesh job, each on all agents at once."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncGenerator, Collection, Iterable, Sequence
from dataclasses import dataclass

import grpc
import torch

from pac.engine.checkpoint import join_shards
from pac.pipeline.batch_part import BatchPart, owned_part, pack_steps, pipeline_parts
from pac.pipeline.job import RESTORE_STEP, MeshJobSettings
from pac.pipeline.layout import PipelineLayout
from pac.wire.client import send_tensors
from pac.wire.download import download
from protos.v1 import agent_pb2, agent_pb2_grpc, tensors_pb2

EXPORT_METHOD = "/pac.v1.Agent/ExportAdapters"
# Cache-phase steps sent to the agents per RunSteps call: the mini-batch parts of a window
# travel in one message, and the agents report each step as it ends.
STEPS_PER_CALL = 64
# How long closing a job waits for an agent (a frozen one must not hold up the job's end).
CLOSE_TIMEOUT_S = 2.0


@dataclass
class StepTotals:
    loss_sum: float
    terms: int


@dataclass(frozen=True)
class StepInput:
    """One mini-batch as the coordinator holds it: collated, its samples' fingerprints and
    its loss count."""

    batch: dict[str, torch.Tensor]
    sample_ids: list[str]
    loss_count: int


def _window(step: int, boundary: int) -> int:
    """How many steps a call from ``step`` takes (ending at a multiple of ``boundary``)."""
    if boundary <= 0:
        return STEPS_PER_CALL
    return min(STEPS_PER_CALL, boundary - step % boundary)


class MeshCalls:
    def __init__(
        self,
        job_id: str,
        channels: dict[str, grpc.aio.Channel],
        devices: list[str],
        token: str | None,
        metadata: tuple[tuple[str, str], ...],
    ) -> None:
        self.job_id = job_id
        self.channels = channels
        self.devices = devices
        self.token = token
        self.metadata = metadata
        self.stubs = {name: agent_pb2_grpc.AgentStub(channels[name]) for name in devices}
        self.layout: PipelineLayout | None = None
        # Each sample's owner once the cache is redistributed: the cache phase has begun.
        self.owners: dict[str, str] = {}
        # Epoch 1's device of each sample in its stage (pac.pipeline.balance; {}: by position).
        self.slots: dict[str, int] = {}
        # Tensor bytes of the mini-batch parts this coordinator sent (all steps, all agents),
        # and how many calls to agents the steps took.
        self.batch_bytes = 0
        self.step_calls = 0

    async def open(self, settings: MeshJobSettings) -> None:
        self.layout = settings.layout
        request = agent_pb2.OpenJobRequest(job_id=self.job_id, settings_json=settings.to_json())
        await asyncio.gather(
            *(self.stubs[d].OpenJob(request, metadata=self.metadata) for d in self.devices)
        )

    def parts(
        self, batch: dict[str, torch.Tensor], sample_ids: list[str], count: int
    ) -> dict[str, BatchPart]:
        """What each agent is sent for a step: in epoch 1 its share's rows (longest first,
        each cut to its micro-batch's columns) with its stage's keys; in the cache phase the
        rows of the samples it owns, with masks and labels."""
        whole = BatchPart.whole(batch, sample_ids, count)
        if self.owners:
            return {d: owned_part(self.owners, d, whole) for d in self.devices}
        if self.layout is None:
            raise RuntimeError("open the job (MeshCalls.open) before its steps")
        return pipeline_parts(self.layout, whole, self.slots)

    async def step(
        self, step: int, batch: dict[str, torch.Tensor], sample_ids: list[str], count: int
    ) -> StepTotals:
        """Send every agent its part of the mini-batch, run the step everywhere, sum the
        loss terms."""
        messages = {d: part.pack() for d, part in self.parts(batch, sample_ids, count).items()}
        await self._send_batches(step, 0, messages)
        request = agent_pb2.RunStepRequest(job_id=self.job_id, step=step, recv_timeout_s=300)
        self.step_calls += len(self.devices)
        replies = await asyncio.gather(
            *(self.stubs[d].RunStep(request, metadata=self.metadata) for d in self.devices)
        )
        return StepTotals(sum(r.loss_sum for r in replies), sum(r.loss_terms for r in replies))

    async def _send_batches(
        self, step: int, micro_batch: int, messages: dict[str, dict[str, torch.Tensor]]
    ) -> None:
        self.batch_bytes += sum(
            t.numel() * t.element_size() for m in messages.values() for t in m.values()
        )
        self.step_calls += len(messages)
        routing = tensors_pb2.Routing(
            job_id=self.job_id,
            step=step,
            micro_batch=micro_batch,
            stage=0,
            kind=tensors_pb2.TENSOR_KIND_BATCH,
            sender="coordinator",
        )
        await asyncio.gather(
            *(
                send_tensors(self.channels[d], message, routing, token=self.token, peer=d)
                for d, message in messages.items()
            )
        )

    async def steps(
        self, first_step: int, inputs: Iterable[StepInput], boundary: int = 0
    ) -> AsyncGenerator[tuple[StepInput, StepTotals]]:
        """Run ``inputs`` as steps ``first_step ..``, yielding each with its loss terms.
        Epoch 1 is one round trip per step; the cache phase sends ``STEPS_PER_CALL`` steps
        per call, and a call ends where the steps done reach a multiple of ``boundary``
        (the agents are then between steps: what they trained can be exported). Closing
        the iterator early stops the agents after their current step."""
        pending = iter(inputs)
        step = first_step
        if not self.owners:
            for item in pending:
                yield item, await self.step(step, item.batch, item.sample_ids, item.loss_count)
                step += 1
            return
        while window := list(itertools.islice(pending, _window(step, boundary))):
            async with contextlib.aclosing(self.run_steps(step, window)) as totals:
                async for offset, total in totals:
                    yield window[offset], total
            step += len(window)

    async def run_steps(
        self, first_step: int, window: Sequence[StepInput]
    ) -> AsyncGenerator[tuple[int, StepTotals]]:
        """Cache phase: every agent gets its parts of the window's mini-batches in one
        message and runs them back to back (the ring all-reduce keeps the agents in
        lockstep); yields (offset in the window, summed loss terms) as every agent has
        reported that step."""
        parts = [self.parts(i.batch, i.sample_ids, i.loss_count) for i in window]
        messages = {d: pack_steps([p[d] for p in parts]) for d in self.devices}
        await self._send_batches(first_step, 1, messages)
        request = agent_pb2.RunStepsRequest(
            job_id=self.job_id, first_step=first_step, steps=len(window), recv_timeout_s=300
        )
        self.step_calls += len(self.devices)
        streams = {d: self.stubs[d].RunSteps(request, metadata=self.metadata) for d in self.devices}

        async def report(device: str, step: int) -> agent_pb2.StepReport:
            reply = await streams[device].read()
            if reply is grpc.aio.EOF or reply.step != step:
                raise RuntimeError(
                    f"agent {device!r} ended its range of steps before step {step}; see its log"
                )
            return reply

        try:
            for offset in range(len(window)):
                replies = await asyncio.gather(
                    *(report(d, first_step + offset) for d in self.devices)
                )
                yield (
                    offset,
                    StepTotals(
                        sum(r.loss_sum for r in replies), sum(r.loss_terms for r in replies)
                    ),
                )
        finally:
            for stream in streams.values():
                stream.cancel()

    async def redistribute(self, owners: dict[str, str]) -> tuple[int, int]:
        """Every agent sends its entries to their owners; returns (bytes, entries) moved.
        From then on each agent is sent only the rows it owns."""
        self.owners = dict(owners)
        request = agent_pb2.RedistributeRequest(job_id=self.job_id, owners_json=json.dumps(owners))
        replies = await asyncio.gather(
            *(self.stubs[d].Redistribute(request, metadata=self.metadata) for d in self.devices)
        )
        return sum(r.bytes_sent for r in replies), sum(r.entries_sent for r in replies)

    async def release(self) -> dict[str, agent_pb2.ReleaseBackboneReply]:
        request = agent_pb2.ReleaseBackboneRequest(job_id=self.job_id)
        replies = await asyncio.gather(
            *(self.stubs[d].ReleaseBackbone(request, metadata=self.metadata) for d in self.devices)
        )
        return dict(zip(self.devices, replies, strict=True))

    async def restore(
        self, state: dict[str, torch.Tensor], step: int, rebuild_cache: bool
    ) -> set[int]:
        """A restarted job: every agent gets the state kept from the last completed epoch
        (``step`` optimizer steps in), and with ``rebuild_cache`` rebuilds its cache with
        forward-only pipeline steps before the cache phase. Returns the samples whose
        ladder points the agents' caches already hold (taken over from the attempt
        before: the rebuild skips them), as ``fingerprint_key`` of their fingerprints."""
        routing = tensors_pb2.Routing(
            job_id=self.job_id,
            step=RESTORE_STEP,
            kind=tensors_pb2.TENSOR_KIND_ADAPTER,
            sender="coordinator",
        )
        await asyncio.gather(
            *(
                send_tensors(self.channels[d], state, routing, token=self.token, peer=d)
                for d in self.devices
            )
        )
        request = agent_pb2.RestoreStateRequest(
            job_id=self.job_id, step=step, rebuild_cache=rebuild_cache
        )
        replies = await asyncio.gather(
            *(self.stubs[d].RestoreState(request, metadata=self.metadata) for d in self.devices)
        )
        return {key for reply in replies for key in reply.cached_sample_keys}

    async def export(self, optimizer_state: bool = False) -> dict[str, torch.Tensor]:
        """The union of what the agents trained (each stage's owner sends its part; in the
        cache phase every agent holds the same parameters, so one sends them); with
        ``optimizer_state`` also its optimizer state (see ``TrainingSession.export``),
        which in the cache phase every agent holds a piece of: all send theirs, joined
        here (a ValueError if they do not make it whole)."""
        request = agent_pb2.ExportAdaptersRequest(
            job_id=self.job_id, optimizer_state=optimizer_state
        ).SerializeToString()
        senders = self.devices[:1] if self.owners and not optimizer_state else self.devices
        parts = await asyncio.gather(
            *(download(self.channels[d], EXPORT_METHOD, request, self.metadata) for d in senders)
        )
        merged: dict[str, torch.Tensor] = {}
        for part in parts:
            for name, tensor in part.items():
                merged.setdefault(name, tensor)
        return join_shards(merged, strict=True)

    async def close(self, skip: Collection[str] = (), keep_cache: bool = False) -> None:
        """Close the job on every agent at once (an agent that went away or froze has
        nothing to close: its call fails or times out, and the others are not held up;
        ``skip``: agents known to be gone, not called at all; ``keep_cache``: the agents
        keep their activation caches for the job's next attempt)."""
        await asyncio.gather(
            *(
                close_job_on(self.stubs[d], self.job_id, self.metadata, keep_cache)
                for d in self.devices
                if d not in skip
            )
        )


async def close_job_on(
    stub: agent_pb2_grpc.AgentStub,
    job_id: str,
    metadata: tuple[tuple[str, str], ...],
    keep_cache: bool = False,
) -> None:
    """Close ``job_id`` on one agent, waiting at most ``CLOSE_TIMEOUT_S`` (an agent that
    went away or froze has nothing to close: its failure is ignored)."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        await stub.CloseJob(
            agent_pb2.CloseJobRequest(job_id=job_id, keep_cache=keep_cache),
            metadata=metadata,
            timeout=CLOSE_TIMEOUT_S,
        )
