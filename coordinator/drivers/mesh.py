"""``MeshDriver``: a whole job across the registered agents.

Profiles the agents (their measured matmul speed and memory), asks the planner for the cut
and the groups (or takes the job's fixed ``layout``), opens the job on every agent (each
builds the same replica from the same seed), then drives the steps: the coordinator, which
holds the data, sends every agent the mini-batch and starts the step on all of them; the
agents exchange activations, side-state gradients and group gradients among themselves,
and the last stage's agents answer with their loss terms.

After epoch 1 of a parallel-adapters job: redistribution (each sample gets one owner,
shares proportional to the agents' speed; the agents move their cache entries peer to
peer), then every agent gathers the side network, releases the backbone, and epochs 2..N
run data-parallel from the caches. Baselines keep the pipeline for every epoch. After each
epoch the coordinator merges the agents' trained parameters, evaluates them (backbone live,
on the coordinator, which holds the evaluation data) and writes the adapters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from coordinator.driver import DriverContext, JobResult, LiveAgents, ProgressSink
from coordinator.drivers.mesh_calls import MeshCalls
from coordinator.drivers.mesh_job import JobData
from coordinator.jobs import Job, JobSpec, JobState, Progress
from coordinator.registry import AgentLiveness
from pac.pipeline.cache_phase import assign_owners
from pac.pipeline.layout import PipelineLayout, StageSpec
from pac.techniques.heads import loss_count
from pac.wire.auth import token_metadata
from pac.wire.channel import TransportSecurity, open_channel
from protos.v1 import agent_pb2, agent_pb2_grpc

if TYPE_CHECKING:
    from planner.plan import Plan

log = logging.getLogger("pac.coordinator.mesh")


class MeshError(RuntimeError):
    """The mesh cannot run this job (no agents, a bad layout, an agent failed)."""


def layout_of(chosen: Plan) -> PipelineLayout:
    return PipelineLayout(
        stages=tuple(
            StageSpec(s.start, s.end, s.group.devices, tuple(float(x) for x in s.group.shares))
            for s in chosen.stages
        ),
        micro_batches=chosen.micro_batches,
    )


def plan_for(
    spec: JobSpec,
    agents: list[tuple[str, agent_pb2.DeviceProfile]],
    measured: dict[str, float] | None = None,
) -> Plan:
    """The planner's plan for these agents. Per-layer times: scaled from ``measured[name]``
    (the agent's mean seconds per sample through one of the job's blocks, from its
    Profile) where given, else from the agent's matmul GFLOPS and the layers' FLOPs."""
    from planner.api import plan
    from planner.estimate import device_profile, model_profile, model_shape, read_config
    from planner.profiles import Cluster

    shape = model_shape(read_config(spec.model_dir), Path(spec.model_dir).name)
    seq = spec.max_length
    devices = tuple(
        device_profile(
            name,
            shape,
            seq,
            memory_bytes=int(profile.available_memory_bytes or profile.memory_bytes),
            gflops=max(profile.matmul_gflops, 1.0),
            layer_forward_s=(measured or {}).get(name),
        )
        for name, profile in agents
    )
    return plan(
        Cluster(devices),
        model_profile(shape, seq),
        technique=spec.technique,
        global_batch=spec.batch_size,
        micro_batches=spec.micro_batches if spec.micro_batches > 1 else None,
    )


class MeshDriver:
    """Runs a job on the live agents (see the module docstring)."""

    def __init__(self, context: DriverContext | None = None) -> None:
        self.context = context or DriverContext()

    def run(
        self, job: Job, agents: LiveAgents, progress: ProgressSink, cancelled: threading.Event
    ) -> JobResult:
        return asyncio.run(self._run(job, agents, progress, cancelled))

    def _channel(self, address: str) -> grpc.aio.Channel:
        security = self.context.security or TransportSecurity(insecure=True)
        return open_channel(address, security)

    async def _run(
        self, job: Job, agents: LiveAgents, progress: ProgressSink, cancelled: threading.Event
    ) -> JobResult:
        spec = job.spec
        live = sorted(
            (record for record, liveness in agents if liveness is AgentLiveness.ALIVE),
            key=lambda record: record.name,
        )
        if not live:
            raise MeshError("no live agent is registered: start agents (pac agent ...) first")
        channels = {record.name: self._channel(record.address) for record in live}
        calls: MeshCalls | None = None
        try:
            progress(Progress(state=JobState.PROFILING))
            profiles = {
                record.name: agent_pb2.DeviceProfile.FromString(record.profile) for record in live
            }
            fixed = spec.technique_settings.get("layout")
            measured = {} if fixed else await self._profile(channels, spec)
            progress(Progress(state=JobState.PLANNING))
            predicted_step_s = 0.0
            if fixed:
                layout = PipelineLayout.from_json(json.dumps(fixed))
            else:
                chosen = plan_for(spec, list(profiles.items()), measured)
                layout, predicted_step_s = layout_of(chosen), chosen.step_time_s
            unknown = set(layout.devices) - set(channels)
            if unknown:
                raise MeshError(f"the layout names agents that are not live: {sorted(unknown)}")
            log.info("job %s layout: %s", job.job_id, layout.to_json())

            progress(Progress(state=JobState.LOADING))
            run = await asyncio.to_thread(
                JobData.load, spec, layout, {r.name: r.address for r in live}
            )
            layout.validate(len(run.loaded.family.blocks()))
            run.predicted_step_s = predicted_step_s
            calls = MeshCalls(
                job.job_id,
                channels,
                list(layout.devices),
                self.context.join_token,
                token_metadata(self.context.join_token),
            )
            await calls.open(run.settings)
            metrics: dict[str, float] = {}
            cache_phase = spec.technique == "parallel-adapters"
            for epoch in range(1, spec.epochs + 1):
                progress(Progress(state=JobState.TRAINING, epoch=epoch))
                started = time.perf_counter()
                if not await self._epoch(calls, run, epoch, progress, cancelled):
                    return JobResult(output_dir=job.output_dir)
                seconds = time.perf_counter() - started
                if epoch == 1 and cache_phase and spec.epochs > 1:
                    await self._redistribute(calls, run, layout, profiles, progress)
                metrics = await self._evaluate(calls, run, job, epoch, seconds)
                progress(Progress(state=JobState.TRAINING, epoch=epoch, metrics=metrics))
            return JobResult(metrics=metrics, output_dir=job.output_dir)
        finally:
            if calls is not None:
                await calls.close()
            for channel in channels.values():
                await channel.close()

    async def _profile(
        self, channels: dict[str, grpc.aio.Channel], spec: JobSpec
    ) -> dict[str, float]:
        """Each agent times the job's blocks on its own hardware: its mean seconds per
        sample through one block, at the micro-batch size the job will use."""
        micro = max(1, spec.batch_size // max(1, spec.micro_batches))
        request = agent_pb2.ProfileRequest(
            model_dir=str(Path(spec.model_dir).resolve()),
            batch_size=micro,
            seq_len=min(spec.max_length, 64),
            repeats=2,
        )
        metadata = token_metadata(self.context.join_token)
        names = list(channels)
        replies = await asyncio.gather(
            *(
                agent_pb2_grpc.AgentStub(channels[n]).Profile(request, metadata=metadata)
                for n in names
            )
        )
        measured = {}
        for name, reply in zip(names, replies, strict=True):
            times = [layer.forward_seconds for layer in reply.layers]
            if times:
                measured[name] = sum(times) / len(times) / micro
        log.info("per-sample block seconds by agent: %s", measured)
        return measured

    async def _epoch(
        self,
        calls: MeshCalls,
        run: JobData,
        epoch: int,
        progress: ProgressSink,
        cancelled: threading.Event,
    ) -> bool:
        """One pass over the training data on the mesh; False when cancelled."""
        started, done = time.perf_counter(), 0
        for group in run.batches(epoch):
            if cancelled.is_set():
                return False
            batch = run.collate(group)
            count = loss_count(run.task, batch)
            totals = await calls.step(run.step, batch, [s.fingerprint for s in group], count)
            run.step += 1
            done += len(group)
            rate = done / max(time.perf_counter() - started, 1e-9)
            progress(
                Progress(
                    state=JobState.TRAINING,
                    epoch=epoch,
                    step=run.step,
                    loss=totals.loss_sum / max(1, count),
                    samples=len(group),
                    samples_per_second=rate,
                    eta_seconds=(len(run.samples) - done) / max(rate, 1e-9),
                )
            )
        return True

    async def _redistribute(
        self,
        calls: MeshCalls,
        run: JobData,
        layout: PipelineLayout,
        profiles: dict[str, agent_pb2.DeviceProfile],
        progress: ProgressSink,
    ) -> None:
        """Give every sample one owner, move the cache entries, switch to the cache phase."""
        progress(Progress(state=JobState.REDISTRIBUTING, redistribution_progress=0.0))
        devices = list(layout.devices)
        shares = [max(profiles[d].matmul_gflops, 1.0) for d in devices]
        fingerprints = list(dict.fromkeys(s.fingerprint for s in run.samples))
        owners = assign_owners(fingerprints, devices, shares)
        moved_bytes, entries = await calls.redistribute(owners)
        progress(
            Progress(
                state=JobState.REDISTRIBUTING,
                redistribution_progress=1.0,
                redistribution_bytes=moved_bytes,
            )
        )
        releases = await calls.release()
        for device, reply in releases.items():
            log.info(
                "job %s: %s moved its share of %d entries (%d bytes in all); released the "
                "backbone: RSS %.0f -> %.0f MiB",
                calls.job_id,
                device,
                entries,
                moved_bytes,
                reply.rss_before_bytes / 2**20,
                reply.rss_after_bytes / 2**20,
            )
        run.memory = {
            device: (reply.rss_before_bytes, reply.rss_after_bytes)
            for device, reply in releases.items()
        }

    async def _evaluate(
        self, calls: MeshCalls, run: JobData, job: Job, epoch: int, seconds: float
    ) -> dict[str, float]:
        """Merge the trained parameters, write the adapters, evaluate them."""
        trained = await calls.export()
        metrics = await asyncio.to_thread(run.evaluate, trained)
        metrics["epoch"] = float(epoch)
        metrics["seconds"] = seconds
        if epoch == 1 and run.predicted_step_s:
            # The planner's prediction for the pipeline epoch, beside the measurement.
            metrics["predicted_seconds"] = run.predicted_step_s * len(run.batches(1))
        await asyncio.to_thread(run.save, Path(job.output_dir), metrics)
        return metrics
