"""``LocalDriver``: the job runs standalone in the coordinator's own process.

Real training with :class:`pac.engine.trainer.Trainer` (any technique; parallel adapters
with the activation cache in the job's folder), reporting every optimizer step (step,
loss, samples/s, ETA) and every epoch (evaluation metrics). Cancellation is checked after
each step; the adapters and ``metrics.jsonl`` are written to the job's output directory.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import cast

from coordinator.driver import JobResult, LiveAgents, ProgressSink
from coordinator.jobs import CACHE_DTYPES, Job, JobSpec, JobState, Progress
from pac.tasks import HeadKind, TaskKind, TaskSpec
from pac.technique_names import DROPOUT_TECHNIQUES

log = logging.getLogger("pac.coordinator")


class _Cancelled(Exception):
    """Raised from the step callback to leave the epoch at a step boundary."""


# Keys of a job's technique_settings that steer the driver, not the technique.
DRIVER_SETTINGS = ("layout", "checkpoint_every", "bucket_bytes", "cache_chunk_bytes", "keep_cache")


def technique_settings(spec: JobSpec) -> dict[str, object]:
    """The technique's settings: the user's JSON (less the driver's keys), plus the side
    width for PAC and the job's dropout where the technique has one."""
    settings: dict[str, object] = {
        k: v for k, v in spec.technique_settings.items() if k not in DRIVER_SETTINGS
    }
    if spec.technique == "parallel-adapters":
        settings.setdefault("reduction", spec.side_reduction)
    if spec.dropout and spec.technique in DROPOUT_TECHNIQUES:
        settings.setdefault("dropout", spec.dropout)
    return settings


def task_spec(spec: JobSpec) -> TaskSpec:
    """The job's task as the engine's value (kind and head were validated at submission)."""
    return TaskSpec(
        kind=cast(TaskKind, spec.task),
        labels=spec.labels,
        head=cast(HeadKind, spec.head),
        max_length=spec.max_length,
        max_target_length=spec.max_target_length,
    )


class LocalDriver:
    """Runs a job on the coordinator's machine, ignoring the agents."""

    def run(
        self, job: Job, agents: LiveAgents, progress: ProgressSink, cancelled: threading.Event
    ) -> JobResult:
        from pac.engine.dataset import DataFields
        from pac.engine.trainer import TrainConfig, Trainer

        spec = job.spec
        out = Path(job.output_dir)
        progress(Progress(state=JobState.LOADING))
        config = TrainConfig(
            model_dir=Path(spec.model_dir),
            train_path=Path(spec.data_path),
            eval_path=Path(spec.eval_path) if spec.eval_path else None,
            # kind and head were validated when the job was submitted
            task=task_spec(spec),
            technique=spec.technique,
            technique_settings=technique_settings(spec),
            out_dir=out,
            epochs=spec.epochs,
            batch_size=spec.batch_size,
            learning_rate=spec.learning_rate or None,
            weight_decay=spec.weight_decay,
            seed=spec.seed,
            cache_dir=out / "cache",
            cache_precision=CACHE_DTYPES[spec.cache_dtype],
            fields=DataFields(
                spec.text_field, spec.pair_field, spec.label_field, spec.data_format
            ),
        )
        trainer = Trainer(config)
        if cancelled.is_set():  # cancelled while the model loaded
            return JobResult(output_dir=str(out))
        pace = _Pace(trainer.steps_per_epoch * spec.epochs, progress, cancelled)
        metrics: dict[str, float] = {}
        for epoch in range(1, spec.epochs + 1):
            progress(
                Progress(
                    state=JobState.TRAINING,
                    epoch=epoch,
                    step=pace.step,
                    total_steps=pace.total_steps,
                )
            )
            start = pace.start_epoch()
            try:
                loss, phase = trainer.train_epoch(epoch, on_step=pace.on_step)
            except _Cancelled:
                log.info("job %s cancelled at step %d", job.job_id, pace.step)
                return JobResult(metrics=metrics, output_dir=str(out))
            seconds = time.perf_counter() - start
            pace.end_epoch()
            report = trainer.end_epoch(epoch, phase, loss, seconds)
            metrics = {
                name: float(value)
                for name, value in report.eval.items()
                if isinstance(value, (int, float))
            }
            progress(Progress(loss=loss, metrics=metrics))
            if cancelled.is_set():
                return JobResult(metrics=metrics, output_dir=str(out))
        trainer.export()
        return JobResult(metrics=metrics, output_dir=str(out))


class _Pace:
    """Counts steps and turns them into progress: samples/s in this epoch, ETA from the
    mean step time so far. Raises _Cancelled at a step boundary once cancelled."""

    def __init__(
        self, total_steps: int, progress: ProgressSink, cancelled: threading.Event
    ) -> None:
        self.total_steps = total_steps
        self.progress = progress
        self.cancelled = cancelled
        self.step = 0
        self.seconds_before = 0.0
        self.epoch_start = time.perf_counter()
        self.seen = 0

    def start_epoch(self) -> float:
        self.epoch_start = time.perf_counter()
        self.seen = 0
        return self.epoch_start

    def end_epoch(self) -> None:
        self.seconds_before += time.perf_counter() - self.epoch_start

    def on_step(self, count: int, loss: float) -> None:
        """``count``: samples seen in this epoch so far; ``loss``: this step's loss."""
        self.step += 1
        in_epoch = max(time.perf_counter() - self.epoch_start, 1e-9)
        per_step = (self.seconds_before + in_epoch) / self.step
        self.progress(
            Progress(
                step=self.step,
                loss=loss,
                samples_per_second=count / in_epoch,
                eta_seconds=max(0, self.total_steps - self.step) * per_step,
                samples=count - self.seen,
            )
        )
        self.seen = count
        if self.cancelled.is_set():
            raise _Cancelled
