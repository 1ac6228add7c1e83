"""Jobs and their progress events in SQLite, in the coordinator's ``--state`` directory.

One row per job (its spec as JSON, state, epoch, step, loss, metrics, reason, timestamps)
and one row per progress event, so that a restarted coordinator still knows every job.
A job that was running when the last coordinator stopped is settled by
``settle_interrupted``: queued again when its driver can resume it (a mesh job resumes
from its agents' checkpoints), else FAILED with the reason in words.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from coordinator.jobs import Job, JobSpec, JobState, UnknownJob

RESTART_REASON = "coordinator restarted during the job"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    step INTEGER NOT NULL,
    total_steps INTEGER NOT NULL,
    loss REAL NOT NULL,
    samples_per_second REAL NOT NULL,
    eta_seconds REAL NOT NULL,
    metrics TEXT NOT NULL,
    reason TEXT NOT NULL,
    output_dir TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS progress (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(job_id),
    time REAL NOT NULL,
    state TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    step INTEGER NOT NULL,
    loss REAL NOT NULL,
    samples_per_second REAL NOT NULL,
    eta_seconds REAL NOT NULL,
    metrics TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS progress_by_job ON progress(job_id, id);
"""
_COLUMNS = (
    "job_id",
    "spec",
    "state",
    "epoch",
    "step",
    "total_steps",
    "loss",
    "samples_per_second",
    "eta_seconds",
    "metrics",
    "reason",
    "output_dir",
    "created_at",
    "updated_at",
)


class JobStore:
    """Thread-safe (one connection behind a lock): the gRPC/REST handlers and the job
    runner thread all write here."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "coordinator.sqlite"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._db.commit()
        # (state, epoch) of each job as last saved: a save that changes it is made durable
        # (fsync), step-by-step progress is not (see ``save``).
        self._saved: dict[str, tuple[JobState, int]] = {}
        self._synchronous = ""

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def _row(job: Job) -> tuple[object, ...]:
        return (
            job.job_id,
            json.dumps(job.spec.to_json()),
            job.state.value,
            job.epoch,
            job.step,
            job.total_steps,
            job.loss,
            job.samples_per_second,
            job.eta_seconds,
            json.dumps(job.metrics),
            job.reason,
            job.output_dir,
            job.created_at,
            job.updated_at,
        )

    @staticmethod
    def _job(row: tuple[object, ...]) -> Job:
        values = dict(zip(_COLUMNS, row, strict=True))
        return Job(
            job_id=str(values["job_id"]),
            spec=JobSpec.from_json(json.loads(str(values["spec"]))),
            state=JobState(values["state"]),
            epoch=int(values["epoch"]),  # type: ignore[call-overload]
            step=int(values["step"]),  # type: ignore[call-overload]
            total_steps=int(values["total_steps"]),  # type: ignore[call-overload]
            loss=float(values["loss"]),  # type: ignore[arg-type]
            samples_per_second=float(values["samples_per_second"]),  # type: ignore[arg-type]
            eta_seconds=float(values["eta_seconds"]),  # type: ignore[arg-type]
            metrics=json.loads(str(values["metrics"])),
            reason=str(values["reason"]),
            output_dir=str(values["output_dir"]),
            created_at=float(values["created_at"]),  # type: ignore[arg-type]
            updated_at=float(values["updated_at"]),  # type: ignore[arg-type]
        )

    def save(self, job: Job, event: bool = True) -> None:
        """Insert or replace the job's row; with ``event`` also append a progress event.

        A save that changes the job's state or epoch is synced to disk before it returns.
        Progress within an epoch (a step, its loss) is committed without an fsync (WAL,
        ``synchronous=NORMAL``: still atomic, and durable at the next sync): the job's
        driver saves every step, and an fsync each time (about 3 ms) held up the steps.
        A power cut can lose the last steps' progress, never a state change."""
        marks = ", ".join("?" for _ in _COLUMNS)
        milestone = (job.state, job.epoch)
        with self._lock:
            self._set_synchronous("FULL" if self._saved.get(job.job_id) != milestone else "NORMAL")
            self._saved[job.job_id] = milestone
            self._db.execute(
                f"INSERT OR REPLACE INTO jobs ({', '.join(_COLUMNS)}) VALUES ({marks})",
                self._row(job),
            )
            if event:
                self._db.execute(
                    "INSERT INTO progress (job_id, time, state, epoch, step, loss, "
                    "samples_per_second, eta_seconds, metrics) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        job.job_id,
                        job.updated_at,
                        job.state.value,
                        job.epoch,
                        job.step,
                        job.loss,
                        job.samples_per_second,
                        job.eta_seconds,
                        json.dumps(job.metrics),
                    ),
                )
            self._db.commit()

    def _set_synchronous(self, level: str) -> None:
        if level != self._synchronous:
            self._db.execute(f"PRAGMA synchronous={level}")
            self._synchronous = level

    def synchronous(self) -> int:
        """SQLite's current ``synchronous`` level (1 NORMAL, 2 FULL): for tests."""
        with self._lock:
            return int(self._db.execute("PRAGMA synchronous").fetchone()[0])

    def get(self, job_id: str) -> Job:
        with self._lock:
            row = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs WHERE job_id = ?", (job_id,)
            ).fetchone()
        if row is None:
            raise UnknownJob(job_id)
        return self._job(row)

    def jobs(self) -> list[Job]:
        """Every job, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM jobs ORDER BY created_at, job_id"
            ).fetchall()
        return [self._job(row) for row in rows]

    def events(self, job_id: str) -> list[tuple[str, int, int]]:
        """(state, epoch, step) of each recorded progress event of a job, in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT state, epoch, step FROM progress WHERE job_id = ? ORDER BY id", (job_id,)
            ).fetchall()
        return [(str(state), int(epoch), int(step)) for state, epoch, step in rows]

    def settle_interrupted(
        self, now: float, resumable: Callable[[Job], bool] = lambda job: False
    ) -> tuple[list[str], list[str]]:
        """Every job that was live when the last coordinator stopped goes back to QUEUED
        when ``resumable(job)`` (its progress kept: the driver sees where it was), else is
        marked FAILED with :data:`RESTART_REASON`. Returns (requeued ids, failed ids).
        QUEUED jobs never started and stay queued (the coordinator queues them again)."""
        requeued, failed = [], []
        for job in self.jobs():
            if job.state.terminal or job.state == JobState.QUEUED:
                continue
            if resumable(job):
                self.save(job.moved_to(JobState.QUEUED, now))
                requeued.append(job.job_id)
            else:
                self.save(job.moved_to(JobState.FAILED, now, reason=RESTART_REASON))
                failed.append(job.job_id)
        return requeued, failed
