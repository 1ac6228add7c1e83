"""The plain Coordinator: validation, the state machine, real training, cancellation."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from coordinator.core import Coordinator
from coordinator.driver import JobResult
from coordinator.jobs import (
    IllegalTransition,
    Job,
    JobSpec,
    JobSpecError,
    JobState,
    Progress,
    UnknownJob,
)


def test_a_local_job_trains_to_done_with_progress_and_adapters(
        make_coordinator: Callable[..., Coordinator], spec: JobSpec) -> None:
    coordinator = make_coordinator()
    seen: list[Job] = []
    job = coordinator.submit(spec)
    coordinator.subscribe(job.job_id, seen.append)
    done = coordinator.wait(job.job_id, timeout=120)
    assert done.state == JobState.DONE, done.reason
    assert done.epoch == 2 and done.step == done.total_steps == 8
    assert "accuracy" in done.metrics
    states = [state for state, _, _ in coordinator.store.events(job.job_id)]
    assert states[0] == "queued" and states[-1] == "done"
    assert states.index("loading") < states.index("training")
    epochs = {epoch for state, epoch, _ in coordinator.store.events(job.job_id)
              if state == "training"}
    assert epochs == {1, 2}
    assert any(j.samples_per_second > 0 and j.eta_seconds >= 0 for j in seen)
    out = Path(done.output_dir)
    reports = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in reports] == [1, 2]
    assert [r["phase"] for r in reports] == ["backbone", "cache"]
    assert (out / "adapters.safetensors").is_file() and (out / "adapter_config.json").is_file()
    text = coordinator.metrics.registry.get_sample_value(
        "pac_job_state", {"job": job.job_id, "state": "done"})
    assert text == 1.0
    assert coordinator.metrics.registry.get_sample_value(
        "pac_job_samples_total", {"job": job.job_id}) == 32.0


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"model_dir": "/nowhere/model"}, "model_dir", "not a directory"),
    ({"technique": "prompt-tuning"}, "technique", "unknown technique"),
    ({"batch_size": 2, "micro_batches": 4}, "batch_size", "smaller than the micro-batch"),
    ({"task": "translation"}, "task", "unknown task"),
    ({"epochs": 0}, "epochs", "at least 1 epoch"),
    ({"data_path": "/nowhere/train.jsonl"}, "data_path", "does not exist"),
    ({"technique": "adapters", "dropout": 0.1}, "dropout", "no dropout of its own"),
    ({"dropout": 0.1, "technique_settings": {"dropout": 0.2}}, "dropout", "disagrees"),
    ({"weight_decay": -0.1}, "weight_decay", "non-negative"),
    ({"max_restarts": -1}, "max_restarts", "use 0"),
])
def test_malformed_jobs_are_refused_naming_the_field(
        make_coordinator: Callable[..., Coordinator], spec: JobSpec,
        change: dict[str, object], field: str, words: str) -> None:
    coordinator = make_coordinator()
    with pytest.raises(JobSpecError) as raised:
        coordinator.submit(replace(spec, **change))  # type: ignore[arg-type]
    assert any(name == field and words in message for name, message in raised.value.problems)
    assert str(raised.value).startswith(field)
    assert coordinator.jobs() == []


def test_a_model_dir_without_config_is_not_a_hugging_face_dir(
        make_coordinator: Callable[..., Coordinator], spec: JobSpec, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(JobSpecError, match=r"no config\.json"):
        make_coordinator().submit(replace(spec, model_dir=str(tmp_path / "empty")))


def test_only_legal_transitions(spec: JobSpec) -> None:
    job = Job(job_id="j", spec=spec)
    with pytest.raises(IllegalTransition):
        job.moved_to(JobState.DONE, 1.0)
    with pytest.raises(IllegalTransition, match="needs a reason"):
        job.moved_to(JobState.FAILED, 1.0)
    training = job.moved_to(JobState.LOADING, 1.0).moved_to(JobState.TRAINING, 2.0, epoch=1)
    assert training.moved_to(JobState.TRAINING, 3.0, epoch=2).epoch == 2
    done = training.moved_to(JobState.DONE, 4.0)
    for state in JobState:
        if state != JobState.DONE:
            with pytest.raises(IllegalTransition):
                done.moved_to(state, 5.0, reason="x")


def test_cancel_stops_a_running_job_and_a_queued_one(
        make_coordinator: Callable[..., Coordinator], spec: JobSpec, gated_driver: Any) -> None:
    driver = gated_driver
    coordinator = make_coordinator(drivers={"local": driver})
    running = coordinator.submit(spec)
    queued = coordinator.submit(spec)
    assert driver.training.wait(10)
    assert coordinator.cancel(queued.job_id).state == JobState.CANCELLED
    coordinator.cancel(running.job_id)
    assert coordinator.wait(running.job_id, timeout=10).state == JobState.CANCELLED
    assert coordinator.get(queued.job_id).state == JobState.CANCELLED
    with pytest.raises(UnknownJob):
        coordinator.cancel("no-such-job")


def test_a_driver_error_fails_the_job_with_its_reason(
        make_coordinator: Callable[..., Coordinator], spec: JobSpec, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a film"}\n')  # no label: the engine refuses the data
    coordinator = make_coordinator()
    job = coordinator.wait(coordinator.submit(replace(spec, data_path=str(bad))).job_id, 60)
    assert job.state == JobState.FAILED
    assert "label" in job.reason


CONTRACT = ("pac_coordinator_agents", "pac_coordinator_agent_up",
            "pac_coordinator_agent_last_heartbeat_seconds", "pac_coordinator_jobs",
            "pac_job_state", "pac_job_epoch", "pac_job_step", "pac_job_loss",
            "pac_job_eval_metric", "pac_job_samples_per_second", "pac_job_eta_seconds",
            "pac_job_samples_total", "pac_job_redistribution_progress",
            "pac_job_redistribution_bytes_total")


def test_metrics_follow_the_contract(make_coordinator: Callable[..., Coordinator],
                                     spec: JobSpec, gated_driver: Any) -> None:
    from prometheus_client import generate_latest

    coordinator = make_coordinator(drivers={"local": gated_driver})
    coordinator.registry.register("jetson-1", "10.0.0.5:50061")
    job = coordinator.submit(spec)
    coordinator.wait(job.job_id, 10, until=lambda j: j.step >= 3)
    gated_driver.release.set()
    coordinator.wait(job.job_id, 10)
    text = generate_latest(coordinator.metrics.registry).decode()
    for name in CONTRACT:
        # (older clients write a counter's TYPE line without "_total")
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    sample = coordinator.metrics.registry.get_sample_value
    assert sample("pac_coordinator_agents", {"state": "live"}) == 1.0
    assert sample("pac_coordinator_agent_up", {"agent": "jetson-1"}) == 1.0
    assert sample("pac_coordinator_jobs", {"state": "done"}) == 1.0
    assert sample("pac_job_eval_metric", {"job": job.job_id, "metric": "accuracy"}) == 0.5
    done = coordinator.get(job.job_id)
    assert sample("pac_job_samples_total", {"job": job.job_id}) == 4.0 * done.step


class _Idle:
    """A driver that returns without ever training."""

    def run(self, job: Job, agents: object, progress: Callable[[Progress], None],
            cancelled: object) -> JobResult:
        progress(Progress(state=JobState.LOADING))
        return JobResult()


class _Lawless:
    """A driver that tries an illegal move (QUEUED -> DONE)."""

    def run(self, job: Job, agents: object, progress: Callable[[Progress], None],
            cancelled: object) -> JobResult:
        progress(Progress(state=JobState.DONE))
        return JobResult()


def test_a_misbehaving_driver_fails_its_job_and_the_next_job_still_runs(
        make_coordinator: Callable[..., Coordinator], spec: JobSpec, gated_driver: Any) -> None:
    coordinator = make_coordinator(drivers={"idle": _Idle(), "lawless": _Lawless(),
                                            "local": gated_driver})
    idle = coordinator.submit(replace(spec, placement="idle"))
    lawless = coordinator.submit(replace(spec, placement="lawless"))
    gated_driver.release.set()
    good = coordinator.submit(spec)
    assert coordinator.wait(good.job_id, 10).state == JobState.DONE
    failed = coordinator.get(idle.job_id)
    assert failed.state == JobState.FAILED and "returned before training" in failed.reason
    failed = coordinator.get(lawless.job_id)
    assert failed.state == JobState.FAILED and "queued -> done is not a legal move" in failed.reason
    with pytest.raises(JobSpecError, match="unknown placement 'gpu'"):
        coordinator.submit(replace(spec, placement="gpu"))


def test_an_agent_is_told_which_of_its_open_jobs_have_ended(
        make_coordinator: Callable[..., Coordinator], spec: JobSpec, gated_driver: Any) -> None:
    from pac.pipeline.job import attempt_id, job_of_attempt

    coordinator = make_coordinator(drivers={"local": gated_driver})
    running = coordinator.submit(spec)
    assert gated_driver.training.wait(10)
    queued = coordinator.submit(spec)
    coordinator.cancel(queued.job_id)
    assert job_of_attempt(attempt_id(running.job_id, 2)) == (running.job_id, 2)
    held = [running.job_id, attempt_id(running.job_id, 1), queued.job_id,
            attempt_id(queued.job_id, 1), "0123456789ab"]
    # A running job's attempts stay open, a cancelled job's are over; a job this
    # coordinator never ran (a tool's, opened on the agent directly) is not its to close.
    assert coordinator.ended_jobs(held) == held[2:4]
    # Once the running job restarted as attempt 1, its attempt 0 is over (an agent that
    # missed the restart still holds it).
    coordinator._progress(running.job_id, Progress(attempt=attempt_id(running.job_id, 1)))
    assert coordinator.ended_jobs(held) == [held[0], *held[2:4]]
    coordinator.cancel(running.job_id)
    coordinator.wait(running.job_id, timeout=10)
    assert coordinator.ended_jobs(held) == held[:4]


def test_cancel_stops_real_training_at_a_step_boundary(
        make_coordinator: Callable[..., Coordinator], spec: JobSpec) -> None:
    coordinator = make_coordinator()
    job = coordinator.submit(replace(spec, epochs=200, eval_path=""))
    coordinator.wait(job.job_id, 60, until=lambda j: j.step >= 2)
    coordinator.cancel(job.job_id)
    cancelled = coordinator.wait(job.job_id, 30)
    assert cancelled.state == JobState.CANCELLED
    assert 2 <= cancelled.step < cancelled.total_steps == 800
    assert not (Path(cancelled.output_dir) / "adapters.safetensors").exists()
    assert coordinator.cancel(job.job_id).state == JobState.CANCELLED  # idempotent
