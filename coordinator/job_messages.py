"""Protobuf <-> job values: ``JobSpec``, ``Job`` and progress events.

Zero values of optional proto fields mean "the default" (0 micro-batches = 1, empty head
= linear, ...); epochs and batch size have no default and a 0 is refused by validation.
"""

from __future__ import annotations

from coordinator.jobs import DEFAULT_MAX_RESTARTS, Job, JobSpec, JobState, parse_technique_json
from protos.v1 import coordinator_pb2 as pb

STATE_TO_PROTO = {
    JobState.QUEUED: pb.JOB_STATE_QUEUED,
    JobState.PROFILING: pb.JOB_STATE_PROFILING,
    JobState.PLANNING: pb.JOB_STATE_PLANNING,
    JobState.LOADING: pb.JOB_STATE_LOADING,
    JobState.TRAINING: pb.JOB_STATE_TRAINING,
    JobState.REDISTRIBUTING: pb.JOB_STATE_REDISTRIBUTING,
    JobState.DONE: pb.JOB_STATE_DONE,
    JobState.FAILED: pb.JOB_STATE_FAILED,
    JobState.CANCELLED: pb.JOB_STATE_CANCELLED,
}
STATE_FROM_PROTO = {value: state for state, value in STATE_TO_PROTO.items()}


def state_name(value: int) -> str:
    """ "training" for JOB_STATE_TRAINING (and "unspecified" for 0)."""
    state = STATE_FROM_PROTO.get(value)  # type: ignore[call-overload]
    return state.value if state is not None else "unspecified"


def spec_from_proto(message: pb.JobSpec) -> JobSpec:
    """A JobSpec value; JobSpecError when ``technique_json`` is not a JSON object."""
    data, task, training = message.data, message.task, message.training
    fields = list(data.text_fields) or ["text"]
    if len(fields) > 2:
        fields = fields[:2]
    return JobSpec(
        model_dir=message.model_dir,
        data_path=data.path,
        eval_path=data.eval_path,
        data_format=data.format,
        text_field=fields[0],
        pair_field=fields[1] if len(fields) > 1 else "text_pair",
        label_field=data.label_field or "label",
        task=task.kind,
        labels=tuple(task.labels),
        head=task.head or "linear",
        max_length=task.max_length or 128,
        max_target_length=task.max_target_length or 32,
        technique=message.technique,
        technique_settings=parse_technique_json(message.technique_json),
        epochs=training.epochs,
        batch_size=training.batch_size,
        micro_batches=training.micro_batches or 1,
        learning_rate=training.learning_rate,
        seed=training.seed,
        side_reduction=training.side_reduction or 8,
        cache_dtype=training.cache_dtype or "float16",
        weight_decay=training.weight_decay,
        dropout=training.dropout,
        max_restarts=(
            training.max_restarts if training.HasField("max_restarts") else DEFAULT_MAX_RESTARTS
        ),
        output_dir=message.output_dir,
        placement=message.placement,
    )


def spec_to_proto(spec: JobSpec) -> pb.JobSpec:
    import json

    fields = [spec.text_field] + ([spec.pair_field] if spec.pair_field != "text_pair" else [])
    return pb.JobSpec(
        model_dir=spec.model_dir,
        data=pb.DataSpec(
            path=spec.data_path,
            format=spec.data_format,
            text_fields=fields,
            label_field=spec.label_field,
            eval_path=spec.eval_path,
        ),
        task=pb.TaskSpec(
            kind=spec.task,
            labels=list(spec.labels),
            head=spec.head,
            max_length=spec.max_length,
            max_target_length=spec.max_target_length,
        ),
        technique=spec.technique,
        technique_json=json.dumps(spec.technique_settings) if spec.technique_settings else "",
        training=pb.TrainingSettings(
            epochs=spec.epochs,
            batch_size=spec.batch_size,
            micro_batches=spec.micro_batches,
            learning_rate=spec.learning_rate,
            seed=spec.seed,
            side_reduction=spec.side_reduction,
            cache_dtype=spec.cache_dtype,
            weight_decay=spec.weight_decay,
            dropout=spec.dropout,
            max_restarts=spec.max_restarts,
        ),
        output_dir=spec.output_dir,
        placement=spec.placement,
    )


def job_to_proto(job: Job) -> pb.Job:
    return pb.Job(
        job_id=job.job_id,
        spec=spec_to_proto(job.spec),
        state=STATE_TO_PROTO[job.state],
        epoch=job.epoch,
        step=job.step,
        total_steps=job.total_steps,
        loss=job.loss,
        error=job.reason,
        created_unix=job.created_at,
        updated_unix=job.updated_at,
        metrics=job.metrics,
        samples_per_second=job.samples_per_second,
        eta_seconds=job.eta_seconds,
    )


def progress_to_proto(job: Job) -> pb.JobProgress:
    return pb.JobProgress(
        job_id=job.job_id,
        state=STATE_TO_PROTO[job.state],
        epoch=job.epoch,
        step=job.step,
        total_steps=job.total_steps,
        loss=job.loss,
        samples_per_second=job.samples_per_second,
        eta_seconds=job.eta_seconds,
        unix_time=job.updated_at,
        metrics=job.metrics,
        error=job.reason,
    )
