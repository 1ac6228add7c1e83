"""The coordinator as a plain object: agent registry, job store, drivers. No network here.

The gRPC servicer and the REST app both call a ``Coordinator``; tests call it directly.
Jobs run one at a time, in submission order, on a runner thread (the mesh's agents can
serve one training job at a time; a standalone job would compete with it for the CPU).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from queue import Queue

from coordinator.driver import JobDriver, LiveAgents, default_drivers
from coordinator.job_store import JobStore
from coordinator.jobs import (
    IllegalTransition,
    Job,
    JobSpec,
    JobState,
    Progress,
    UnknownJob,
    validate_spec,
)
from coordinator.metrics import CoordinatorMetrics
from coordinator.registry import AgentRegistry
from pac.pipeline.job import job_of_attempt

log = logging.getLogger("pac.coordinator")
JobListener = Callable[[Job], None]


class Coordinator:
    """Jobs and agents of one mesh, persisted in ``state_dir``.

    ``drivers`` maps a placement name to the driver that runs it (default:
    :func:`coordinator.driver.default_drivers`); ``default_placement`` is used when a
    job's spec names none. ``close()`` stops the runner; a job still running then stays
    in its state on disk and is failed by the next coordinator on this ``state_dir``.
    """

    def __init__(
        self,
        state_dir: Path,
        registry: AgentRegistry | None = None,
        drivers: Mapping[str, JobDriver] | None = None,
        default_placement: str = "local",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.registry = registry or AgentRegistry()
        self.drivers = dict(drivers) if drivers is not None else default_drivers()
        if default_placement not in self.drivers:
            raise ValueError(
                f"default placement {default_placement!r} has no driver; "
                f"known: {', '.join(self.drivers)}"
            )
        self.default_placement = default_placement
        self.metrics = CoordinatorMetrics(self.registry)
        self._clock = clock
        self.store = JobStore(self.state_dir)
        self._changed = threading.Condition()
        self._listeners: dict[str, list[JobListener]] = {}
        self._cancel: dict[str, threading.Event] = {}
        # Each running mesh job's current attempt id (what its agents know it by).
        self._attempts: dict[str, str] = {}
        self._queue: Queue[str | None] = Queue()
        self._stopping = threading.Event()
        requeued, interrupted = self.store.settle_interrupted(clock(), self._resumable)
        if requeued:
            log.warning(
                "jobs %s were running when the last coordinator stopped: queued again, to "
                "resume from their agents' checkpoints",
                ", ".join(requeued),
            )
        if interrupted:
            log.warning(
                "jobs %s were running when the last coordinator stopped: failed",
                ", ".join(interrupted),
            )
        self._jobs = {job.job_id: job for job in self.store.jobs()}
        for job in self._jobs.values():
            self.metrics.observe(job)
            if job.state == JobState.QUEUED:
                self._queue.put(job.job_id)
        self._runner = threading.Thread(target=self._run_jobs, name="pac-jobs", daemon=True)
        self._runner.start()

    # ---- queries -----------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        with self._changed:
            job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(job_id)
        return job

    def jobs(self) -> list[Job]:
        """Every job, oldest first."""
        with self._changed:
            listed = list(self._jobs.values())
        return sorted(listed, key=lambda job: (job.created_at, job.job_id))

    def _resumable(self, job: Job) -> bool:
        """A mesh job may restart (its agents keep its checkpoints): it resumes when a
        coordinator restarted during it."""
        return job.spec.placement == "mesh" and "mesh" in self.drivers and job.spec.max_restarts > 0

    def ended_jobs(self, held: list[str]) -> list[str]:
        """Of the jobs (attempt ids) an agent holds open, those whose job has ended here, or
        that are an earlier attempt of a job now running another (the agent missed the
        restart): the agent may close them. (One this coordinator does not know was opened
        by someone else, a tool talking to the agent directly: not its to close.)"""
        ended = []
        with self._changed:
            for name in held:
                job_id = job_of_attempt(name)[0]
                job, current = self._jobs.get(job_id), self._attempts.get(job_id, name)
                if job is not None and (job.state.terminal or name != current):
                    ended.append(name)
        return ended

    def agents(self, include_lost: bool = False) -> LiveAgents:
        return self.registry.agents(include_lost=include_lost)

    # ---- commands ----------------------------------------------------------------------
    def submit(self, spec: JobSpec) -> Job:
        """Validate and queue a job; JobSpecError names what is wrong."""
        if not spec.placement:
            spec = replace(spec, placement=self.default_placement)
        validate_spec(spec, tuple(self.drivers))
        job_id = uuid.uuid4().hex[:12]
        output_dir = spec.output_dir or str(self.state_dir / "jobs" / job_id)
        now = self._clock()
        job = Job(job_id=job_id, spec=spec, output_dir=output_dir, created_at=now, updated_at=now)
        self._record(job)
        self._queue.put(job_id)
        log.info("job %s queued: %s %s on %s", job_id, spec.technique, spec.task, spec.model_dir)
        return job

    def cancel(self, job_id: str) -> Job:
        """Cancel a job: a queued one at once, a running one at its next step (then it
        reads CANCELLED). Cancelling an ended job changes nothing."""
        with self._changed:
            job = self.get(job_id)
            event = self._cancel.get(job_id)
            if event is not None:  # the runner has it: the driver stops at its next step
                event.set()
            elif job.state == JobState.QUEUED:
                return self._update(job_id, lambda j: j.moved_to(JobState.CANCELLED, self._clock()))
        return self.get(job_id)

    def subscribe(self, job_id: str, listener: JobListener) -> Callable[[], None]:
        """Call ``listener(job)`` after every change of the job (from any thread); returns
        the function that unsubscribes. UnknownJob for an unknown id."""
        self.get(job_id)
        with self._changed:
            self._listeners.setdefault(job_id, []).append(listener)

        def unsubscribe() -> None:
            with self._changed:
                listeners = self._listeners.get(job_id, [])
                if listener in listeners:
                    listeners.remove(listener)

        return unsubscribe

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        until: Callable[[Job], bool] = lambda job: job.state.terminal,
    ) -> Job:
        """Block until ``until(job)`` holds (default: the job ended) or ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                job = self._jobs.get(job_id)
                if job is None:
                    raise UnknownJob(job_id)
                if until(job):
                    return job
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError(f"job {job_id} is still {job.state.value}")
                self._changed.wait(left)

    def close(self, timeout: float = 10.0) -> None:
        """Stop the runner (a running job is asked to stop and left as it is on disk)."""
        self._stopping.set()
        with self._changed:
            for event in self._cancel.values():
                event.set()
        self._queue.put(None)
        self._runner.join(timeout)
        self.store.close()

    # ---- the job runner ----------------------------------------------------------------
    def _record(self, job: Job, progress: Progress | None = None) -> None:
        with self._changed:
            self._jobs[job.job_id] = job
            self.store.save(job)
            self.metrics.observe(job, progress)
            listeners = list(self._listeners.get(job.job_id, ()))
            self._changed.notify_all()
        for listener in listeners:
            try:
                listener(job)
            except Exception:  # a watcher that went away must not stop the job
                log.exception("a listener of job %s failed", job.job_id)

    def _update(
        self, job_id: str, change: Callable[[Job], Job], progress: Progress | None = None
    ) -> Job:
        with self._changed:
            job = change(self._jobs[job_id])
            self._record(job, progress)
        return job

    def _apply(self, job: Job, progress: Progress) -> Job:
        now = self._clock()
        if progress.state is not None:
            job = job.moved_to(progress.state, now, epoch=progress.epoch)
        elif progress.epoch is not None and progress.epoch != job.epoch:
            job = job.moved_to(job.state, now, epoch=progress.epoch)

        def pick(new: float | None, old: float) -> float:
            return old if new is None else new

        return replace(
            job,
            step=int(pick(progress.step, job.step)),
            total_steps=int(pick(progress.total_steps, job.total_steps)),
            loss=pick(progress.loss, job.loss),
            samples_per_second=pick(progress.samples_per_second, job.samples_per_second),
            eta_seconds=pick(progress.eta_seconds, job.eta_seconds),
            metrics=dict(progress.metrics) if progress.metrics else job.metrics,
            updated_at=now,
        )

    def _progress(self, job_id: str, progress: Progress) -> None:
        if self._stopping.is_set():
            return  # the store is closing; this job is failed by the next coordinator
        if progress.attempt:
            with self._changed:
                self._attempts[job_id] = progress.attempt
        self._update(job_id, lambda job: self._apply(job, progress), progress)

    def _run_jobs(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None or self._stopping.is_set():
                return
            try:
                self._run_one(job_id)
            except Exception:  # a bug here must not stop the jobs queued behind
                log.exception("the runner failed on job %s", job_id)
                self._end(
                    job_id, JobState.FAILED, "internal error of the coordinator (see its log)"
                )

    def _end(self, job_id: str, state: JobState, reason: str = "") -> None:
        """Move a job to an ending state unless it already ended."""
        with self._changed:
            if not self._jobs[job_id].state.terminal:
                self._update(job_id, lambda j: j.moved_to(state, self._clock(), reason=reason))

    def _run_one(self, job_id: str) -> None:
        cancelled = threading.Event()
        with self._changed:  # atomically with cancel(): it sees QUEUED or the event
            job = self._jobs[job_id]
            if job.state != JobState.QUEUED:
                return  # cancelled while queued
            self._cancel[job_id] = cancelled
        driver = self.drivers[job.spec.placement]
        try:
            Path(job.output_dir).mkdir(parents=True, exist_ok=True)
            result = driver.run(job, self.agents(), lambda p: self._progress(job_id, p), cancelled)
        except Exception as error:  # any failure fails the job, with its text
            if not self._stopping.is_set():
                log.exception("job %s failed", job_id)
                self._end(job_id, JobState.FAILED, str(error) or type(error).__name__)
            return
        finally:
            with self._changed:
                self._cancel.pop(job_id, None)
                self._attempts.pop(job_id, None)
        if self._stopping.is_set():
            return
        if cancelled.is_set():
            self._end(job_id, JobState.CANCELLED)
            return
        metrics = result.metrics or self.get(job_id).metrics
        try:
            self._update(
                job_id,
                lambda j: replace(
                    j.moved_to(JobState.DONE, self._clock()),
                    metrics=metrics,
                    eta_seconds=0.0,
                    output_dir=result.output_dir or j.output_dir,
                ),
            )
        except IllegalTransition as error:
            self._end(job_id, JobState.FAILED, f"the driver returned before training ({error})")
            return
        log.info("job %s done: %s", job_id, metrics)
