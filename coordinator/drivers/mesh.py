"""``MeshDriver``: epoch 1 of a job across the registered agents.

Profiles the agents (their measured matmul speed and memory), asks the planner for the cut
and the groups (or takes the job's fixed ``layout``), opens the job on every agent (each
builds the same replica from the same seed), then drives the steps: the coordinator, which
holds the data, sends every agent the mini-batch and starts the step on all of them; the
agents exchange activations, side-state gradients and group gradients among themselves,
and the last stage's agents answer with their loss terms.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import cast

import grpc

from coordinator.driver import DriverContext, JobResult, LiveAgents, ProgressSink
from coordinator.drivers.local import technique_settings
from coordinator.jobs import CACHE_DTYPES, Job, JobSpec, JobState, Progress
from coordinator.registry import AgentLiveness
from pac.pipeline.job import MeshJobSettings, pack_batch
from pac.pipeline.layout import PipelineLayout, StageSpec
from pac.wire.auth import token_metadata
from pac.wire.channel import TransportSecurity, open_channel
from pac.wire.client import send_tensors
from protos.v1 import agent_pb2, agent_pb2_grpc, tensors_pb2

log = logging.getLogger("pac.coordinator.mesh")


class MeshError(RuntimeError):
    """The mesh cannot run this job (no agents, a bad layout, an agent failed)."""


def plan_layout(spec: JobSpec, agents: list[tuple[str, agent_pb2.DeviceProfile]]) -> PipelineLayout:
    """The planner's cut and groups for these agents (estimated per-layer times from each
    agent's measured matmul speed), as a :class:`PipelineLayout`."""
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
        )
        for name, profile in agents
    )
    chosen = plan(
        Cluster(devices),
        model_profile(shape, seq),
        technique=spec.technique,
        global_batch=spec.batch_size,
        micro_batches=spec.micro_batches if spec.micro_batches > 1 else None,
    )
    return PipelineLayout(
        stages=tuple(
            StageSpec(s.start, s.end, s.group.devices, tuple(float(x) for x in s.group.shares))
            for s in chosen.stages
        ),
        micro_batches=chosen.micro_batches,
    )


class MeshDriver:
    """Runs epoch 1 of a job on the live agents (see the module docstring)."""

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
        from pac.data.batches import batches
        from pac.data.collate import collate
        from pac.engine.dataset import DataFields, load_samples, pad_id, resolve_task
        from pac.engine.loading import load_model
        from pac.engine.schedule import DEFAULT_LEARNING_RATE
        from pac.tasks import HeadKind, TaskKind, TaskSpec
        from pac.techniques.heads import loss_count

        spec = job.spec
        live = sorted(
            (record for record, liveness in agents if liveness is AgentLiveness.ALIVE),
            key=lambda record: record.name,
        )
        if not live:
            raise MeshError("no live agent is registered: start agents (pac agent ...) first")
        metadata = token_metadata(self.context.join_token)
        channels = {record.name: self._channel(record.address) for record in live}
        stubs = {name: agent_pb2_grpc.AgentStub(ch) for name, ch in channels.items()}
        opened: list[str] = []
        try:
            progress(Progress(state=JobState.PROFILING))
            profiles = [
                (record.name, agent_pb2.DeviceProfile.FromString(record.profile)) for record in live
            ]
            progress(Progress(state=JobState.PLANNING))
            fixed = spec.technique_settings.get("layout")
            layout = (
                PipelineLayout.from_json(json.dumps(fixed))
                if fixed
                else plan_layout(spec, profiles)
            )
            unknown = set(layout.devices) - set(channels)
            if unknown:
                raise MeshError(f"the layout names agents that are not live: {sorted(unknown)}")
            log.info("job %s layout: %s", job.job_id, layout.to_json())

            progress(Progress(state=JobState.LOADING))
            loaded = await asyncio.to_thread(load_model, spec.model_dir)
            layout.validate(len(loaded.family.blocks()))
            fields = DataFields(spec.text_field, spec.pair_field, spec.label_field)
            task = resolve_task(
                TaskSpec(
                    kind=cast(TaskKind, spec.task),
                    labels=spec.labels,
                    head=cast(HeadKind, spec.head),
                    max_length=spec.max_length,
                    max_target_length=spec.max_target_length,
                ),
                Path(spec.data_path),
                fields,
            )
            samples = load_samples(Path(spec.data_path), loaded, task, fields)
            steps_per_epoch = -(-len(samples) // spec.batch_size)
            settings = technique_settings(spec)
            settings.pop("layout", None)
            mesh = MeshJobSettings(
                model_dir=str(Path(spec.model_dir).resolve()),
                task=task,
                technique=spec.technique,
                technique_settings=settings,
                layout=layout,
                addresses={record.name: record.address for record in live},
                seed=spec.seed,
                learning_rate=spec.learning_rate or DEFAULT_LEARNING_RATE[spec.technique],
                total_steps=steps_per_epoch * spec.epochs,
                cache_precision=CACHE_DTYPES.get(spec.cache_dtype, "fp16"),
            )
            await asyncio.gather(
                *(
                    stubs[name].OpenJob(
                        agent_pb2.OpenJobRequest(job_id=job.job_id, settings_json=mesh.to_json()),
                        metadata=metadata,
                    )
                    for name in layout.devices
                )
            )

            progress(Progress(state=JobState.TRAINING, epoch=1))
            started, done_samples, step = time.perf_counter(), 0, 0
            pad = pad_id(loaded)
            for step, group in enumerate(
                batches(samples, spec.batch_size, shuffle=True, seed=spec.seed, epoch=1)
            ):
                if cancelled.is_set():
                    break
                batch = collate(group, pad, task=task)
                count = loss_count(task, batch)
                message = pack_batch(batch, [s.fingerprint for s in group], count)
                routing = tensors_pb2.Routing(
                    job_id=job.job_id,
                    step=step,
                    micro_batch=0,
                    stage=0,
                    kind=tensors_pb2.TENSOR_KIND_BATCH,
                    sender="coordinator",
                )
                await asyncio.gather(
                    *(
                        send_tensors(
                            channels[name],
                            message,
                            routing,
                            token=self.context.join_token,
                            peer=name,
                        )
                        for name in layout.devices
                    )
                )
                replies = await asyncio.gather(
                    *(
                        stubs[name].RunStep(
                            agent_pb2.RunStepRequest(
                                job_id=job.job_id, step=step, recv_timeout_s=300
                            ),
                            metadata=metadata,
                        )
                        for name in layout.devices
                    )
                )
                loss = sum(r.loss_sum for r in replies) / max(1, count)
                done_samples += len(group)
                elapsed = time.perf_counter() - started
                rate = done_samples / max(elapsed, 1e-9)
                progress(
                    Progress(
                        state=JobState.TRAINING,
                        epoch=1,
                        step=step + 1,
                        loss=loss,
                        samples=len(group),
                        samples_per_second=rate,
                        eta_seconds=(len(samples) - done_samples) / max(rate, 1e-9),
                    )
                )
            return JobResult(metrics={"steps": float(step + 1)}, output_dir=job.output_dir)
        finally:
            for name in opened:
                try:
                    await stubs[name].CloseJob(
                        agent_pb2.CloseJobRequest(job_id=job.job_id), metadata=metadata
                    )
                except grpc.aio.AioRpcError as error:
                    log.warning("closing job %s on %s: %s", job.job_id, name, error.details())
            for channel in channels.values():
                await channel.close()
