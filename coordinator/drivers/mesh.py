"""``MeshDriver``: a whole job across the registered agents.

Leaves out the listed agents that do not answer their health check (one that has just
gone away is still listed until it misses its heartbeats), measures the others (each times
the job's blocks and probes its links), asks the planner for the cut and the groups (or
takes the job's fixed ``layout``), opens the job on every agent (each builds the same
replica from the same seed), then drives the steps: the
coordinator, which holds the data, sends every agent its part of the mini-batch (the rows
it computes, the keys its stage reads) and starts the step on all of them; the agents
exchange activations, side-state gradients and group gradients among themselves, and the
last stage's agents answer with their loss terms.

After epoch 1 of a parallel-adapters job: redistribution (each sample gets one owner,
shares from the plan, preferring what an agent already cached; the agents move their
cache entries peer to peer), then every agent gathers the side network, releases the
backbone, and epochs 2..N run data-parallel from the caches, many steps per call. Baselines
keep the pipeline for every epoch. After each epoch the coordinator merges the agents'
trained parameters, evaluates them (backbone live, on the coordinator, which holds the
evaluation data) and writes the adapters, keeping them with their optimizer state. An
agent that goes away mid-job is named with where the job was (mesh_reach.py), and the job
starts over on the agents still answering from the last state kept (every epoch, and every
``checkpoint_every`` steps when the job sets it), up to the job's
``max_restarts`` times (mesh_restart.py); then it fails with that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from coordinator.driver import DriverContext, JobResult, LiveAgents, ProgressSink
from coordinator.drivers.mesh_calls import MeshCalls, StepInput
from coordinator.drivers.mesh_job import JobData, JobInputs, packs_rows
from coordinator.drivers.mesh_plan import (
    PlanningError,
    layout_of,
    measure_links,
    micro_batch_tokens,
    plan_report,
    planner_inputs,
    profile_agents,
    request_plan,
)
from coordinator.drivers.mesh_reach import (
    AgentsSilent,
    JobPosition,
    call_failure,
    first_silent,
    lost_agents,
    silent_agents,
    silent_failure,
)
from coordinator.drivers.mesh_recovery import (
    close_stale,
    newest_complete,
    read_checkpoints,
    wait_for_agents,
    write_attempt,
)
from coordinator.drivers.mesh_redistribution import (
    assign_owners,
    cache_shares,
    epoch_one_slots,
    layer_cache_bytes,
    predicted_bytes,
)
from coordinator.drivers.mesh_restart import KeptState, Restarts
from coordinator.jobs import Job, JobSpec, JobState, Progress
from coordinator.registry import AgentLiveness, AgentRecord
from pac.data.encoding import EncodedSample, fingerprint_key
from pac.pipeline.job import job_of_attempt
from pac.pipeline.layout import PipelineLayout
from pac.techniques.heads import loss_count
from pac.wire.auth import token_metadata
from pac.wire.channel import TransportSecurity, open_channel
from protos.v1 import agent_pb2, agent_pb2_grpc

if TYPE_CHECKING:
    from planner.plan import Plan

log = logging.getLogger("pac.coordinator.mesh")


class MeshError(RuntimeError):
    """The mesh cannot run this job (no agents, a bad layout, an agent failed)."""


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
        if job.step and self.context.registry is not None:
            # A coordinator restart interrupted it: its agents are registering again.
            agents = await wait_for_agents(
                self.context.registry, Path(job.output_dir), self.context.resume_wait_s
            )
        live = sorted(
            (record for record, liveness in agents if liveness is AgentLiveness.ALIVE),
            key=lambda record: record.name,
        )
        if not live:
            raise MeshError("no live agent is registered: start agents (pac agent ...) first")
        channels = {record.name: self._channel(record.address) for record in live}
        metadata = token_metadata(self.context.join_token)
        # An agent that went away a moment ago is still listed: plan around it.
        silent = await silent_agents(channels, metadata)
        for name, reason in silent.items():
            log.warning("job %s: agent %s does not answer (%s): left out", job.job_id, name, reason)
            await channels.pop(name).close()
        live = [record for record in live if record.name in channels]
        if not live:
            raise MeshError(
                "no registered agent answers: "
                + ", ".join(f"{n} ({r})" for n, r in sorted(silent.items()))
            )
        restarts = Restarts(allowed=job.spec.max_restarts)
        try:
            while True:
                position = JobPosition()

                def report(update: Progress, position: JobPosition = position) -> None:
                    position.follow(update)
                    progress(update)

                try:
                    return await self._run_on(
                        job, live, channels, report, cancelled, silent, restarts
                    )
                except AgentsSilent as gone:
                    lost = gone.silent
                except grpc.aio.AioRpcError as error:
                    # Every agent answers (_run_on found none silent): the call itself failed.
                    raise MeshError(call_failure(error, {}, position)) from None
                if cancelled.is_set():  # the user stopped it anyway: CANCELLED
                    return JobResult(output_dir=job.output_dir)
                live = [record for record in live if record.name not in lost]
                if restarts.left <= 0 or not live:
                    raise MeshError(silent_failure(lost, position, len(restarts.taken)))
                for name in lost:
                    await channels.pop(name).close()
                silent.update(lost)
                why = lost_agents(lost, position)
                self._record_restart(job, why, live, restarts)
                progress(Progress(state=JobState.PROFILING, restarted=why))
        finally:
            for channel in channels.values():
                await channel.close()

    async def _recover(
        self,
        job: Job,
        run: JobData,
        live: list[AgentRecord],
        channels: dict[str, grpc.aio.Channel],
        restarts: Restarts,
        progress: ProgressSink,
    ) -> None:
        """A job a coordinator restart interrupted (it had begun: it has a step): resume it
        from the newest complete checkpoint its agents hold (mesh_recovery.py)."""
        metadata = token_metadata(self.context.join_token)
        found = await read_checkpoints(channels, job.job_id, metadata)
        # (This counts as a restart: the attempt it opens is the first past all seen.)
        restarts.base = found.next_attempt() - 1
        trained = [n for n, p in run.model().named_parameters() if p.requires_grad]
        newest = await asyncio.to_thread(newest_complete, found, trained)
        if newest is not None:
            step, state = newest
            restarts.kept = KeptState.at(state, step, run.steps_per_epoch)
        else:
            log.warning("job %s: no complete checkpoint on its agents: it starts over", job.job_id)
        # The attempts the agents still hold open are closed (their coordinator is gone);
        # their caches are kept for this attempt when it restarts past epoch 1.
        keep = _adopts_caches(job.spec, restarts)
        await close_stale(channels, found, metadata, keep_cache=keep)
        stale = {attempt for attempts in found.open.values() for attempt in attempts}
        restarts.kept_caches = (
            sorted(stale, key=lambda a: job_of_attempt(a)[1], reverse=True) if keep else []
        )
        why = "the coordinator restarted during the job"
        self._record_restart(job, why, live, restarts)
        progress(Progress(restarted=why))

    def _record_restart(
        self, job: Job, why: str, live: list[AgentRecord], restarts: Restarts
    ) -> None:
        record = restarts.take(why, [r.name for r in live], Path(job.output_dir))
        log.warning(
            "job %s: %s; restart %d of %d on %s from epoch %d",
            job.job_id,
            why,
            record["restart"],
            restarts.allowed,
            ", ".join(r.name for r in live),
            restarts.resume_epoch(),
        )

    async def _run_on(
        self,
        job: Job,
        live: list[AgentRecord],
        channels: dict[str, grpc.aio.Channel],
        progress: ProgressSink,
        cancelled: threading.Event,
        silent: dict[str, str],
        restarts: Restarts,
    ) -> JobResult:
        """The job on the agents that answered (``silent``: those left out, and why), from
        the state ``restarts`` kept when this is a restart."""
        spec = job.spec
        calls: MeshCalls | None = None
        gone: dict[str, str] = {}
        try:
            if not restarts.taken:
                progress(Progress(state=JobState.PROFILING))
            profiles = {
                record.name: agent_pb2.DeviceProfile.FromString(record.profile) for record in live
            }
            fixed = spec.technique_settings.get("layout")
            if fixed and restarts.taken and set(_devices_of(fixed)) - set(channels):
                log.warning(
                    "job %s: its layout names an agent that went away; the planner plans the "
                    "restart on the others",
                    job.job_id,
                )
                fixed = None
            chosen: Plan | None = None
            # Seconds of each phase before epoch 1, for the job's metrics.jsonl.
            phases: dict[str, float] = {}
            # The model and data load here while the agents measure themselves.
            reading = asyncio.ensure_future(asyncio.to_thread(JobInputs.timed_load, spec))
            try:
                if fixed:
                    progress(Progress(state=JobState.PLANNING))
                    layout = PipelineLayout.from_json(json.dumps(fixed))
                else:
                    chosen = await self._plan(
                        job, live, channels, profiles, progress, phases, reading
                    )
                    layout = layout_of(chosen)
            except BaseException:
                with contextlib.suppress(Exception):
                    await reading  # (a thread cannot be cancelled: let it end)
                raise
            started = time.perf_counter()
            inputs, phases["load_data_seconds"] = await reading
            # What of the load was left when the plan was ready (the rest overlapped it).
            phases["load_data_wait_seconds"] = time.perf_counter() - started
            unknown = set(layout.devices) - set(channels)
            if unknown:
                why = ", ".join(
                    f"{n} (does not answer: {silent[n]})" if n in silent else f"{n} (not live)"
                    for n in sorted(unknown)
                )
                raise MeshError(f"the layout names agents this job cannot use: {why}")
            log.info("job %s layout: %s", job.job_id, layout.to_json())

            progress(Progress(state=JobState.LOADING))
            run = await asyncio.to_thread(
                JobData.load, spec, layout, {r.name: r.address for r in live}, inputs
            )
            run.phases = phases
            layout.validate(len(run.loaded.family.blocks()))
            run.plan = chosen
            run.predicted_step_s = chosen.step_time_s if chosen else 0.0
            if job.step and not restarts.taken and restarts.kept is None:
                await self._recover(job, run, live, channels, restarts, progress)
            attempt = restarts.attempt_id(job.job_id)
            write_attempt(Path(job.output_dir), attempt, layout.devices)
            progress(Progress(attempt=attempt))
            calls = MeshCalls(
                attempt,
                channels,
                list(layout.devices),
                self.context.join_token,
                token_metadata(self.context.join_token),
            )
            if restarts.kept_caches:
                # The agents that stayed kept their caches: this attempt takes them over.
                run.settings.extra["adopt_cache_from"] = list(restarts.kept_caches)
            return await self._while_answering(
                self._train(job, calls, run, layout, profiles, progress, cancelled, restarts),
                {d: channels[d] for d in layout.devices},
            )
        except AgentsSilent as silent_now:
            gone = silent_now.silent  # (no CloseJob for them: it would wait its deadline)
            raise
        except grpc.aio.AioRpcError:
            # A call failed: because an agent went away (then the job restarts), or not.
            gone = await silent_agents(channels, token_metadata(self.context.join_token))
            if not gone:
                raise
            raise AgentsSilent(gone) from None
        finally:
            if calls is not None:
                # The agents still here keep their caches for the restart that follows.
                keep = (
                    bool(gone)
                    and restarts.left > 0
                    and not cancelled.is_set()
                    and _adopts_caches(spec, restarts)
                )
                await calls.close(skip=gone, keep_cache=keep)
                restarts.kept_caches = [calls.job_id] if keep else []

    async def _train(
        self,
        job: Job,
        calls: MeshCalls,
        run: JobData,
        layout: PipelineLayout,
        profiles: dict[str, agent_pb2.DeviceProfile],
        progress: ProgressSink,
        cancelled: threading.Event,
        restarts: Restarts,
    ) -> JobResult:
        """Open the job on its agents, then its epochs: the pipeline epoch, redistribution
        after it (parallel adapters), the cached ones; each evaluated, and its state kept
        for a restart. A restart first restores the kept state (and rebuilds the cache)."""
        spec = job.spec
        started = time.perf_counter()
        await calls.open(run.settings)
        run.phases["open_job_seconds"] = time.perf_counter() - started
        metrics: dict[str, float] = {}
        cache_phase = spec.technique == "parallel-adapters"
        if cache_phase:  # (which device computes which row: even cache-phase steps)
            shares = cache_shares(run.plan, layout, profiles)
            calls.slots = await asyncio.to_thread(epoch_one_slots, run, layout, shares)
        kept = restarts.kept
        first, offset = (kept.epoch, kept.offset) if kept else (1, 0)
        if first > spec.epochs:  # every step was done; the last evaluation was not
            metrics = await self._evaluate(None, run, job, spec.epochs, 0.0, restarts)
            return JobResult(metrics=metrics, output_dir=job.output_dir)
        if kept is not None:
            started = time.perf_counter()
            held = await calls.restore(kept.tensors, kept.step, cache_phase)
            if cache_phase:
                # Forward-only steps (numbered below the kept step) refill the caches with
                # what epoch 1 cached before the kept step (all of it past epoch 1), but
                # for the samples the agents that stayed still hold.
                rebuild = run.steps_per_epoch if first > 1 else offset
                needed = [s for g in run.batches(1)[:rebuild] for s in g]
                missing = [s for s in needed if fingerprint_key(s.fingerprint) not in held]
                run.phases["cached_samples"] = float(len(needed) - len(missing))
                run.phases["rebuilt_samples"] = float(len(missing))
                log.info(
                    "job %s: rebuilding the cache of %d samples (the agents kept %d)",
                    job.job_id,
                    len(missing),
                    len(needed) - len(missing),
                )
                groups = [
                    missing[i : i + spec.batch_size]
                    for i in range(0, len(missing), spec.batch_size)
                ]
                if not await self._epoch(calls, run, 1, lambda _: None, cancelled, groups=groups):
                    return JobResult(output_dir=job.output_dir)
                if first > 1:
                    await self._redistribute(calls, run, layout, profiles, progress)
            run.phases["restore_seconds"] = time.perf_counter() - started
            run.step = kept.step
        keep_every = int(spec.technique_settings.get("checkpoint_every", 0))
        for epoch in range(first, spec.epochs + 1):
            progress(Progress(state=JobState.TRAINING, epoch=epoch))
            started = time.perf_counter()
            skip = offset if epoch == first else 0
            if not await self._epoch(
                calls, run, epoch, progress, cancelled, skip, restarts=restarts, every=keep_every
            ):
                return JobResult(output_dir=job.output_dir)
            seconds = time.perf_counter() - started
            if epoch == 1 and cache_phase and spec.epochs > 1:
                await self._redistribute(calls, run, layout, profiles, progress)
            metrics = await self._evaluate(calls, run, job, epoch, seconds, restarts)
            progress(Progress(state=JobState.TRAINING, epoch=epoch, metrics=metrics))
        return JobResult(metrics=metrics, output_dir=job.output_dir)

    async def _while_answering(
        self, work: Coroutine[Any, Any, JobResult], channels: dict[str, grpc.aio.Channel]
    ) -> JobResult:
        """``work``, unless one of the job's agents stops answering first: then ``work`` is
        cancelled and AgentsSilent says which (mesh_reach.first_silent)."""
        job = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(
            first_silent(
                channels,
                token_metadata(self.context.join_token),
                self.context.agent_check_interval_s,
                self.context.agent_check_misses,
            )
        )
        try:
            await asyncio.wait({job, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not job.done():
                job.cancel()
            watch.cancel()
        if job.cancelled() or not job.done():
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await job
            raise AgentsSilent(watch.result())
        return job.result()

    async def _plan(
        self,
        job: Job,
        live: list[AgentRecord],
        channels: dict[str, grpc.aio.Channel],
        profiles: dict[str, agent_pb2.DeviceProfile],
        progress: ProgressSink,
        phases: dict[str, float],
        reading: asyncio.Future[tuple[JobInputs, float]],
    ) -> Plan:
        """Measure the agents' blocks and links, then have the planner cut and group; the
        plan and what it was made from go to ``plan.txt`` in the job's output. The seconds
        of each part go to ``phases``. ``reading``: the job's data, loading meanwhile (its
        lengths tell the planner what each micro-batch size pads)."""
        spec = job.spec
        metadata = token_metadata(self.context.join_token)
        stubs = {name: agent_pb2_grpc.AgentStub(channel) for name, channel in channels.items()}
        started = time.perf_counter()
        timings = await profile_agents(
            stubs, spec, metadata, self.context.profile_max_age_s, profiles
        )
        phases["profile_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        links = await measure_links(stubs, {r.name: r.address for r in live}, metadata)
        phases["probe_links_seconds"] = time.perf_counter() - started
        progress(Progress(state=JobState.PLANNING))
        started = time.perf_counter()
        inputs, _ = await reading
        tokens, one_stage = await asyncio.to_thread(
            micro_batch_tokens, spec, inputs, len(profiles)
        )
        cluster, model = await asyncio.to_thread(
            planner_inputs, spec, profiles, timings, links, tokens, one_stage
        )
        try:
            chosen = await request_plan(spec, cluster, model, self.context.planner_address)
        except PlanningError as error:
            raise MeshError(str(error)) from None
        phases["plan_seconds"] = time.perf_counter() - started
        planner = self.context.planner_address or "the planner library in the coordinator"
        log.info("job %s planned by %s:\n%s", job.job_id, planner, chosen)
        packed = packs_rows(spec, inputs.loaded.family)
        text = plan_report(chosen, planner, timings, links, tokens, one_stage, packed)
        await asyncio.to_thread(_write_text, Path(job.output_dir) / "plan.txt", text)
        return chosen

    async def _epoch(
        self,
        calls: MeshCalls,
        run: JobData,
        epoch: int,
        progress: ProgressSink,
        cancelled: threading.Event,
        start: int = 0,
        end: int | None = None,
        restarts: Restarts | None = None,
        every: int = 0,
        groups: list[list[EncodedSample]] | None = None,
    ) -> bool:
        """Mini-batches ``start:end`` of the epoch on the mesh (all of them by default;
        ``groups``: these mini-batches instead); False when cancelled. Epoch 1 is a round
        trip per step; in the cache phase the agents get many steps per call and report
        each one as it ends (progress and cancellation stay per step). With ``restarts``,
        the state is kept for a restart after every ``every`` steps (the agents' calls end
        there)."""
        started, done = time.perf_counter(), 0
        calls_before, bytes_before = calls.step_calls, calls.batch_bytes

        def step_input(group: list[EncodedSample]) -> StepInput:
            batch = run.collate(group)
            return StepInput(batch, [s.fingerprint for s in group], loss_count(run.task, batch))

        if cancelled.is_set():
            return False
        if groups is None:
            groups = run.batches(epoch)[start:end]
        inputs = map(step_input, groups)
        async with contextlib.aclosing(calls.steps(run.step, inputs, every)) as steps:
            async for item, totals in steps:
                run.step += 1
                # (At the epoch's end the evaluation keeps the state.)
                if restarts and every and run.step % every == 0 and run.step % run.steps_per_epoch:
                    restarts.kept = await self._kept(calls, run)
                done += len(item.sample_ids)
                rate = done / max(time.perf_counter() - started, 1e-9)
                progress(
                    Progress(
                        state=JobState.TRAINING,
                        epoch=epoch,
                        step=run.step,
                        loss=totals.loss_sum / max(1, item.loss_count),
                        samples=len(item.sample_ids),
                        samples_per_second=rate,
                        eta_seconds=(len(run.samples) - done) / max(rate, 1e-9),
                    )
                )
                if cancelled.is_set():
                    return False
        log.info(
            "job %s epoch %d: %d steps in %d calls to agents, %d bytes of mini-batches sent",
            calls.job_id,
            epoch,
            len(groups),
            calls.step_calls - calls_before,
            calls.batch_bytes - bytes_before,
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
        started = time.perf_counter()
        shares = cache_shares(run.plan, layout, profiles)
        epoch_one = run.batches(1)
        owners = await asyncio.to_thread(
            assign_owners, run, layout, epoch_one, shares, calls.slots
        )
        per_layer = await asyncio.to_thread(
            layer_cache_bytes, run, epoch_one, run.settings.cache_precision
        )
        predicted = predicted_bytes(
            layout, run.spec.batch_size, shares, per_layer, len(run.samples)
        )
        moved_bytes, entries = await calls.redistribute(owners)
        run.phases["redistribute_seconds"] = time.perf_counter() - started
        run.redistribution_bytes = (moved_bytes, predicted)
        log.info(
            "job %s: redistribution moved %d bytes (%d entries); the planner predicted %d",
            calls.job_id,
            moved_bytes,
            entries,
            predicted,
        )
        progress(
            Progress(
                state=JobState.REDISTRIBUTING,
                redistribution_progress=1.0,
                redistribution_bytes=moved_bytes,
            )
        )
        started = time.perf_counter()
        releases = await calls.release()
        run.phases["release_seconds"] = time.perf_counter() - started
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

    async def _kept(self, calls: MeshCalls, run: JobData) -> KeptState:
        """What the agents have trained so far, with its optimizer state."""
        tensors = await calls.export(optimizer_state=True)
        return KeptState.at(tensors, run.step, run.steps_per_epoch)

    async def _evaluate(
        self,
        calls: MeshCalls | None,
        run: JobData,
        job: Job,
        epoch: int,
        seconds: float,
        restarts: Restarts,
    ) -> dict[str, float]:
        """Merge what the agents trained (kept with its optimizer state: a restart starts
        from here; ``calls`` None: what ``restarts`` kept already), write the adapters,
        evaluate them."""
        started = time.perf_counter()
        if calls is not None:
            restarts.kept = await self._kept(calls, run)
        kept = restarts.kept
        assert kept is not None
        metrics = await asyncio.to_thread(run.evaluate, kept.parameters())
        metrics["epoch"] = float(epoch)
        metrics["seconds"] = seconds
        if restarts.taken:
            metrics["restarts"] = float(len(restarts.taken))
        # What the epoch's end cost beside its steps: the export and the evaluation, and
        # after an attempt's first epoch what came before it (measuring, planning, loading,
        # a restart's restore and cache rebuild) and after it (redistribution, release).
        metrics["evaluate_seconds"] = time.perf_counter() - started
        metrics.update(run.phases)
        run.phases.clear()
        if run.redistribution_bytes:
            measured, predicted = run.redistribution_bytes
            metrics["redistribution_bytes"] = float(measured)
            metrics["predicted_redistribution_bytes"] = float(predicted)
            run.redistribution_bytes = None
        if epoch == 1 and run.predicted_step_s:
            # The planner's prediction for the pipeline epoch, beside the measurement.
            metrics["predicted_seconds"] = run.predicted_step_s * run.steps_per_epoch
        await asyncio.to_thread(run.save, Path(job.output_dir), metrics)
        return metrics


def _adopts_caches(spec: JobSpec, restarts: Restarts) -> bool:
    """Whether a restart from the state ``restarts`` keeps takes over the caches of the
    agents that stayed: a parallel-adapters job restarted past epoch 1, whose restart
    rebuilds the cache and then trains from it (restarted inside epoch 1, its training
    steps cache again as they go, and the old entries are not kept)."""
    kept = restarts.kept
    return spec.technique == "parallel-adapters" and kept is not None and kept.epoch > 1


def _devices_of(layout: dict[str, Any]) -> list[str]:
    """The agents a job's fixed ``layout`` (its JSON form) names."""
    return [d for stage in layout.get("stages", ()) for d in stage.get("devices", ())]


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
