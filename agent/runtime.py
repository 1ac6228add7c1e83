"""The agent's state and behaviour, without gRPC: jobs, their stages, steps, draining.

The servicer (``agent/servicer.py``) only translates protobuf to calls on ``AgentRuntime``
and errors to statuses. Compute runs in a worker thread (``asyncio.to_thread``), so the
event loop keeps receiving tensor streams while a stage computes.

A step is a list of instructions run in order. Each micro-batch of each stage has a slot
holding its current state: RECV fills it from the mailbox, FORWARD replaces it with the
stage's output, SEND ships it to a peer. This is the data the pipeline schedule (a later
issue) will drive; BACKWARD, ALLREDUCE and OPTIMIZER_STEP arrive with the side network.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from transformers import PreTrainedModel

from agent import allocator
from agent.cache_adoption import discard_kept_caches
from agent.checkpoints import attempts_on_disk, newest_checkpoint
from agent.errors import (
    BadRequest,
    Draining,
    JobNotFound,
    MissingInput,
    NotYetSupported,
    StageNotLoaded,
)
from agent.metrics import AgentMetrics
from agent.model_handoff import ModelHandoff
from agent.peak_memory import CACHE_PHASE
from agent.profile_clock import Clock, clock_name, profile_clock
from agent.profile_memo import PROFILES_FILE, ProfileAsk, ProfileMemo
from agent.profiling import ProfileResult, profile_layers
from agent.stage import Stage
from agent.training import TrainingSession, WireTransport
from pac.cluster.cpu_quota import own_quota
from pac.engine.memory import rss_bytes
from pac.pipeline.batch_part import BatchPart, unpack_steps
from pac.pipeline.job import RESTORE_STEP, MeshJobSettings, job_of_attempt
from pac.pipeline.worker import StepResult
from pac.wire.compression import CompressionPolicy
from pac.wire.mailbox import Mailbox, RoutingKey
from protos.v1 import agent_pb2, tensors_pb2

log = logging.getLogger("pac.agent")

# send(peer address, tensors, routing, wire dtype or None) -> bytes sent
Sender = Callable[
    [str, dict[str, torch.Tensor], tensors_pb2.Routing, torch.dtype | None], Awaitable[int]
]
# Key of a job's settings JSON that asks for lossy casts on the wire, per tensor kind:
# {"wire_dtypes": {"TENSOR_KIND_ACTIVATION": "bfloat16"}}.
WIRE_DTYPES_SETTING = "wire_dtypes"

_SLOT = tuple[int, int, int]  # (step, micro_batch, stage)


@dataclass
class JobSession:
    """What an agent holds for one job."""

    job_id: str
    settings_json: str = ""
    compression: CompressionPolicy = field(default_factory=CompressionPolicy)
    stages: dict[int, Stage] = field(default_factory=dict)
    slots: dict[_SLOT, dict[str, torch.Tensor]] = field(default_factory=dict)
    step: int = 0
    # A mesh training job's replica and worker (agent/training.py), when the job's settings
    # carry mesh settings.
    training: TrainingSession | None = None
    # Heap chunks held unwritten from the backbone's release to the job's end
    # (agent/allocator.py).
    heap_holes: allocator.HeapHoles = field(default_factory=allocator.HeapHoles)
    # What a cache-phase step frees, given back when it pays (agent/allocator.py).
    step_trim: allocator.StepTrim = field(default_factory=lambda: allocator.StepTrim(rss_bytes))
    # Held by a training step and by an export while it streams the trained tensors as
    # they lie: the export sends one step's state, not a mix, with no copy of it.
    state_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def stage(self, index: int) -> Stage:
        stage = self.stages.get(index)
        if stage is None:
            loaded = sorted(self.stages) or "none"
            raise StageNotLoaded(
                f"job {self.job_id!r} has no stage {index} on this agent (loaded: {loaded}); "
                "call LoadStage first"
            )
        return stage


@dataclass
class InstructionResult:
    action: int
    micro_batch: int
    seconds: float
    nbytes: int = 0


class AgentRuntime:
    """Jobs, stages and steps of one agent."""

    def __init__(
        self,
        name: str,
        cache_dir: Path,
        send: Sender,
        metrics: AgentMetrics | None = None,
        mailbox: Mailbox | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.name = name
        self.cache_dir = cache_dir
        self.send = send
        self.metrics = metrics or AgentMetrics()
        self.mailbox = mailbox or Mailbox()
        self.device = device
        self.jobs: dict[str, JobSession] = {}
        self.profiles = ProfileMemo(path=cache_dir / PROFILES_FILE)
        self.handoff = ModelHandoff()
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # ---- work accounting (for drain) -----------------------------------------------
    @contextlib.asynccontextmanager
    async def work(self) -> AsyncIterator[None]:
        """Wrap a unit of work so that ``drain`` waits for it; refused while draining."""
        if self.draining:
            raise Draining(f"agent {self.name!r} is draining and takes no new work")
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def drain(self, timeout: float | None = None) -> int:
        """Refuse new work and wait (up to ``timeout`` s) for work in flight; returns how
        many units were still running."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        return self._in_flight

    # ---- jobs ------------------------------------------------------------------------
    def accepts_job(self, job_id: str) -> bool:
        return job_id in self.jobs

    def job(self, job_id: str) -> JobSession:
        session = self.jobs.get(job_id)
        if session is None:
            raise JobNotFound(f"agent {self.name!r} hosts no job {job_id!r}; call OpenJob first")
        return session

    def open_job(self, job_id: str, settings_json: str = "") -> JobSession:
        if not job_id:
            raise BadRequest("a job id must not be empty")
        if self.draining:
            raise Draining(f"agent {self.name!r} is draining and takes no new jobs")
        if job_id in self.jobs:
            return self.jobs[job_id]
        session = JobSession(job_id, settings_json, _compression(settings_json))
        self.jobs[job_id] = session
        self.mailbox.reopen(job_id)
        return session

    async def start_training(self, job_id: str) -> bool:
        """Build the job's replica when its settings are a mesh job's (loads the model in a
        worker thread); returns whether it did."""
        session = self.job(job_id)
        settings = MeshJobSettings.from_json(session.settings_json)
        if settings is None or session.training is not None:
            return False
        transport = WireTransport(
            job_id, self.name, settings, self.send, self.mailbox, asyncio.get_running_loop()
        )
        session.training = await asyncio.to_thread(
            TrainingSession, job_id, self.name, settings, self.cache_dir, transport, self.handoff
        )
        return True

    async def run_training_step(self, job_id: str, step: int, timeout: float) -> StepResult:
        """One mesh training step on the mini-batch the coordinator sent for ``step``."""
        session = self.job(job_id)
        if session.training is None:
            raise BadRequest(f"job {job_id!r} was not opened with mesh settings")
        key = RoutingKey(job_id, step, 0, 0, tensors_pb2.TENSOR_KIND_BATCH)
        try:
            message = await self.mailbox.get(key, timeout)
        except TimeoutError:
            raise TimeoutError(f"no mini-batch arrived for {key} within {timeout} s") from None
        part = BatchPart.unpack(message.tensors)
        session.step = step
        self.metrics.current_step.labels(job_id).set(step)
        started = time.perf_counter()
        async with session.state_lock:
            result = await asyncio.to_thread(session.training.run_step, step, part)
        stage = str(session.training.worker.stage_index)
        elapsed = time.perf_counter() - started
        self.metrics.stage_compute_seconds.labels(job_id, stage).observe(
            max(0.0, elapsed - result.waited_seconds)
        )
        self.metrics.stage_wait_seconds.labels(job_id, stage).observe(result.waited_seconds)
        return result

    async def run_training_steps(
        self, job_id: str, first_step: int, steps: int, timeout: float
    ) -> AsyncGenerator[tuple[int, StepResult]]:
        """Steps ``first_step ..`` of a mesh job back to back, on the parts the coordinator
        sent for the whole range in one message; yields each step's result as it ends (a
        caller that stops iterating stops the range after the current step)."""
        session = self.job(job_id)
        training = self._training(job_id)
        if steps < 1:
            raise BadRequest("RunSteps needs steps >= 1")
        key = RoutingKey(job_id, first_step, 1, 0, tensors_pb2.TENSOR_KIND_BATCH)
        try:
            message = await self.mailbox.get(key, timeout)
        except TimeoutError:
            raise TimeoutError(f"no mini-batches arrived for {key} within {timeout} s") from None
        try:
            parts = unpack_steps(message.tensors, steps)
        except (KeyError, ValueError) as error:
            raise BadRequest(f"the range message for {key} is malformed: {error}") from None
        stage = str(training.worker.stage_index)
        for offset, part in enumerate(parts):
            step = first_step + offset
            session.step = step
            self.metrics.current_step.labels(job_id).set(step)
            started = time.perf_counter()
            async with session.state_lock:
                result = await asyncio.to_thread(
                    _cache_step, training, step, part, session.step_trim
                )
            elapsed = time.perf_counter() - started
            self.metrics.stage_compute_seconds.labels(job_id, stage).observe(
                max(0.0, elapsed - result.waited_seconds)
            )
            for part_name, seconds in result.parts.items():
                self.metrics.cache_step_seconds.labels(job_id, part_name).observe(seconds)
            self.metrics.cache_step_seconds.labels(job_id, "total").observe(elapsed)
            yield step, result

    def _training(self, job_id: str) -> TrainingSession:
        training = self.job(job_id).training
        if training is None:
            raise BadRequest(f"job {job_id!r} was not opened with mesh settings")
        return training

    async def redistribute(self, job_id: str, owners: dict[str, str]) -> tuple[int, int]:
        """Move this agent's cache entries to their samples' owners (worker thread)."""
        by_peer, entries = await asyncio.to_thread(self._training(job_id).redistribute, owners)
        for peer, nbytes in by_peer.items():
            self.metrics.redistributed_bytes.labels(peer).inc(nbytes)
        return sum(by_peer.values()), entries

    async def absorb_cache_entries(self) -> int:
        """Store cache entries that peers sent (redistribution), as soon as they arrive."""
        stored = 0
        for key in self.mailbox.pending():
            if key.kind != tensors_pb2.TENSOR_KIND_CACHE_ENTRY:
                continue
            try:
                message = await self.mailbox.get(key, 0.0)
            except TimeoutError:
                continue  # another call took it
            training = self._training(key.job_id)
            stored += await asyncio.to_thread(training.import_entries, dict(message.tensors))
        self._report_cache_bytes()
        return stored

    def _report_cache_bytes(self) -> None:
        """The activation caches' bytes of the open jobs that keep one, as a gauge."""
        self.metrics.cache_bytes.set(
            sum(
                s.training.cache.nbytes
                for s in self.jobs.values()
                if s.training is not None and s.training.worker.cache is not None
            )
        )

    async def enter_cache_phase(self, job_id: str) -> tuple[int, int, int]:
        """Gather the side network, release the backbone, train from the cache next."""
        released = await asyncio.to_thread(self._training(job_id).enter_cache_phase)
        self.metrics.backbone_released.labels(job_id).set(1)
        # The backbone's blocks leave holes in the heap: held unwritten, the cache phase's
        # blocks do not wander through them.
        session = self.job(job_id)
        allocator.free_heap_holes(session.heap_holes)  # (a repeated call: reserve afresh)
        session.heap_holes = allocator.reserve_heap_holes()
        # The cache phase's peak memory is measured from here, the backbone gone.
        self.metrics.memory.mark(CACHE_PHASE)
        return released

    @contextlib.asynccontextmanager
    async def exported_adapters(
        self, job_id: str, optimizer_state: bool = False
    ) -> AsyncIterator[dict[str, torch.Tensor]]:
        """The job's trained tensors (``TrainingSession.export``) as they lie, not copied:
        no step of the job runs until the caller is done with them. (With the optimizer
        state on the BERT-large shape a copy was 108 MB, the cache phase's peak.)"""
        session = self.job(job_id)
        training = self._training(job_id)
        async with session.state_lock:
            yield await asyncio.to_thread(training.export, optimizer_state)

    async def read_checkpoint(self, job_id: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """The newest checkpoint this agent holds of any attempt of ``job_id`` (no tensors
        and step 0 when none), with the job's attempts it knows ("attempts": on disk or
        open) and holds open ("open"): see the ReadCheckpoint RPC."""
        on_disk = await asyncio.to_thread(attempts_on_disk, self.cache_dir, job_id)
        found = await asyncio.to_thread(newest_checkpoint, self.cache_dir, on_disk)
        tensors, metadata = found or ({}, {"step": "0", "epoch": "0", "attempt": ""})
        open_now = sorted(j for j in self.jobs if job_of_attempt(j)[0] == job_id)
        metadata["open"] = ",".join(open_now)
        metadata["attempts"] = ",".join(sorted(set(open_now) | set(on_disk)))
        return tensors, metadata

    async def restore_state(
        self, job_id: str, step: int, rebuild_cache: bool, timeout: float
    ) -> tuple[int, int, list[str]]:
        """Load the state the coordinator sent for a restarted job (one tensor message,
        step ``RESTORE_STEP``) into the job's replica. Returns (parameters loaded, optimizer
        states waiting, and with ``rebuild_cache`` the samples whose ladder points the
        cache taken over from an earlier attempt holds: the rebuild skips them)."""
        training = self._training(job_id)
        key = RoutingKey(job_id, RESTORE_STEP, 0, 0, tensors_pb2.TENSOR_KIND_ADAPTER)
        try:
            message = await self.mailbox.get(key, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"no state to restore arrived for {key} within {timeout} s"
            ) from None
        loaded, waiting = await asyncio.to_thread(
            training.restore, dict(message.tensors), step, rebuild_cache
        )
        held = await asyncio.to_thread(training.complete_samples) if rebuild_cache else []
        return loaded, waiting, held

    async def close_job(self, job_id: str, keep_cache: bool = False) -> None:
        """Forget the job; its activation cache is deleted unless ``keep_cache`` (the job's
        next attempt takes it over) or the job keeps it (its checkpoint stays). A step
        still running (the coordinator went on without this agent) sees its waits
        cancelled and ends before the cache goes."""
        session = self.job(job_id)
        del self.jobs[job_id]
        self.mailbox.drop_job(job_id)
        if session.training is not None:
            freed = await asyncio.to_thread(session.training.discard_cache, keep_cache)
            if freed:
                log.info("job %s closed: its activation cache (%d bytes) deleted", job_id, freed)
            if not keep_cache and not session.training.settings.extra.get("keep_cache"):
                # Caches that earlier attempts kept for a restart nobody took over.
                job, _ = job_of_attempt(job_id)
                others = await asyncio.to_thread(attempts_on_disk, self.cache_dir, job)
                others = [a for a in others if a != job_id and a not in self.jobs]
                left = await asyncio.to_thread(discard_kept_caches, self.cache_dir, others)
                if left:
                    log.info(
                        "job %s closed: %d bytes of earlier attempts' caches deleted", job_id, left
                    )
            self._report_cache_bytes()
        allocator.free_heap_holes(session.heap_holes)  # (for the next job's epoch 1)
        with contextlib.suppress(KeyError):
            self.metrics.current_step.remove(job_id)

    async def load_stage(
        self,
        job_id: str,
        stage: int,
        model_dir: Path,
        start: int,
        end: int,
        expected_sha256: str = "",
    ) -> Stage:
        """Load blocks ``[start, end)`` of ``model_dir`` as ``stage`` of the job (in a
        worker thread: loading reads and hashes files)."""
        session = self.job(job_id)
        loaded = await asyncio.to_thread(
            Stage.load, model_dir, start, end, expected_sha256, self.device
        )
        session.stages[stage] = loaded
        return loaded

    async def profile(self, ask: ProfileAsk, max_age_s: float = 0.0) -> tuple[ProfileResult, float]:
        """Forward time of the blocks ``ask`` names on this device, and of the side network
        when asked (worker thread), with its age: a profile of the same request measured at
        most ``max_age_s`` ago on the same model files is answered again (agent/profile_memo.py)."""
        threads, quota = torch.get_num_threads(), own_quota()
        conditions = (
            f"device={self.device or 'cpu'};threads={threads};torch={torch.__version__};"
            f"clock={clock_name(quota, threads)}"
        )
        measure = functools.partial(self._measure, clock=profile_clock(quota, threads))
        measured = await asyncio.to_thread(
            self.profiles.profile, replace(ask, conditions=conditions), max_age_s, measure
        )
        if self.handoff.holding:  # a backbone no job takes is let go (agent/model_handoff.py)
            asyncio.get_running_loop().call_later(self.handoff.keep_s + 1, self.handoff.expire)
        return measured

    def _measure(self, ask: ProfileAsk, clock: Clock) -> ProfileResult:
        def keep(model: PreTrainedModel, packed: bool) -> None:
            self.handoff.offer(ask.model_dir, model, packed)

        return profile_layers(
            ask.model_dir,
            ask.start,
            ask.end,
            ask.batch_size,
            ask.seq_len,
            ask.repeats,
            self.device,
            ask.side_network,
            ask.second_batch_size,
            ask.backward_technique,
            ask.packed_backbone,
            keep,
            clock,
        )

    def release_backbone(self, job_id: str) -> int:
        session = self.job(job_id)
        return sum(stage.release() for stage in session.stages.values())

    # ---- steps -----------------------------------------------------------------------
    async def run_step(
        self,
        job_id: str,
        step: int,
        instructions: Iterable[agent_pb2.Instruction],
        recv_timeout: float = 60.0,
    ) -> list[InstructionResult]:
        """Run ``instructions`` in order for ``step`` of the job."""
        session = self.job(job_id)
        session.step = step
        self.metrics.current_step.labels(job_id).set(step)
        results = []
        for instruction in instructions:
            started = time.perf_counter()
            nbytes = await self._run(session, step, instruction, recv_timeout)
            results.append(
                InstructionResult(
                    instruction.action,
                    instruction.micro_batch,
                    time.perf_counter() - started,
                    nbytes,
                )
            )
        return results

    def _default_kind(self, session: JobSession, stage: int) -> int:
        first = stage in session.stages and session.stages[stage].start == 0
        return tensors_pb2.TENSOR_KIND_BATCH if first else tensors_pb2.TENSOR_KIND_ACTIVATION

    async def _run(
        self,
        session: JobSession,
        step: int,
        instruction: agent_pb2.Instruction,
        recv_timeout: float,
    ) -> int:
        slot = (step, instruction.micro_batch, instruction.stage)
        action = instruction.action
        if action == agent_pb2.ACTION_RECV:
            kind = instruction.kind or self._default_kind(session, instruction.stage)
            key = RoutingKey(session.job_id, step, instruction.micro_batch, instruction.stage, kind)
            try:
                message = await self.mailbox.get(key, recv_timeout)
            except TimeoutError:
                raise TimeoutError(f"nothing arrived for {key} within {recv_timeout} s") from None
            session.slots[slot] = message.tensors
            return message.nbytes
        if action == agent_pb2.ACTION_FORWARD:
            stage = session.stage(instruction.stage)
            state = self._take(session, slot, "FORWARD")
            started = time.perf_counter()
            output = await asyncio.to_thread(stage.forward, state)
            self.metrics.stage_compute_seconds.labels(
                session.job_id, str(instruction.stage)
            ).observe(time.perf_counter() - started)
            session.slots[slot] = output
            return 0
        if action == agent_pb2.ACTION_SEND:
            if not instruction.peer:
                raise BadRequest("SEND needs a peer address")
            state = self._take(session, slot, "SEND")
            routing = tensors_pb2.Routing(
                job_id=session.job_id,
                step=step,
                micro_batch=instruction.micro_batch,
                stage=instruction.to_stage or instruction.stage + 1,
                kind=instruction.kind or tensors_pb2.TENSOR_KIND_ACTIVATION,
                sender=self.name,
            )
            kind_name = tensors_pb2.TensorKind.Name(routing.kind)
            wire_dtype = session.compression.wire_dtype(kind_name)
            return await self.send(instruction.peer, state, routing, wire_dtype)
        name = agent_pb2.Action.Name(action)
        raise NotYetSupported(f"{name} is not implemented on the agent yet (pipeline issue)")

    @staticmethod
    def _take(session: JobSession, slot: _SLOT, what: str) -> dict[str, torch.Tensor]:
        state = session.slots.pop(slot, None)
        if state is None:
            step, micro_batch, stage = slot
            raise MissingInput(
                f"{what} of step {step} micro-batch {micro_batch} stage {stage} has no input: "
                "RECV it (or FORWARD) earlier in the step"
            )
        return state


def _compression(settings_json: str) -> CompressionPolicy:
    """The job's wire casts from its settings JSON (none when absent)."""
    if not settings_json:
        return CompressionPolicy()
    try:
        settings = json.loads(settings_json)
    except json.JSONDecodeError as error:
        raise BadRequest(f"job settings are not valid JSON: {error}") from None
    by_kind = settings.get(WIRE_DTYPES_SETTING, {}) if isinstance(settings, dict) else {}
    if not isinstance(by_kind, dict):
        raise BadRequest(f"job setting {WIRE_DTYPES_SETTING!r} must map tensor kinds to dtypes")
    policy = CompressionPolicy({str(k): str(v) for k, v in by_kind.items()})
    for kind in policy.by_kind:
        if kind not in tensors_pb2.TensorKind.DESCRIPTOR.values_by_name:
            raise BadRequest(f"unknown tensor kind {kind!r} in {WIRE_DTYPES_SETTING!r}")
        try:
            policy.wire_dtype(kind)
        except ValueError as error:
            raise BadRequest(str(error)) from None
    return policy


def _cache_step(
    training: TrainingSession, step: int, part: BatchPart, trim: allocator.StepTrim
) -> StepResult:
    """A cache-phase step, then the heap's free pages back to the kernel if the step left
    many: a step's transient blocks (a chunk's ladder points and activations, the
    all-reduce's messages) are freed where later blocks do not always fit, and would
    otherwise stay resident, more of them step after step (see agent/allocator.py)."""
    result = training.run_step(step, part)
    trim.after_step()
    return result
