"""Jobs survive a coordinator restart; a job that was running is failed with the reason."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator.core import Coordinator
from coordinator.job_store import RESTART_REASON
from coordinator.jobs import JobSpec, JobState


def test_jobs_are_intact_after_a_restart_and_a_running_one_fails_with_the_reason(
        make_coordinator: Callable[..., Coordinator], spec: JobSpec, gated_driver: Any,
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = make_coordinator(state, drivers={"local": gated_driver})
    finished = first.submit(spec)
    gated_driver.release.set()
    assert first.wait(finished.job_id, timeout=10).state == JobState.DONE
    gated_driver.release.clear()
    running = first.submit(spec)
    gated_driver.training.clear()
    assert gated_driver.training.wait(10)
    before = first.wait(running.job_id, 10, until=lambda job: job.step >= 2)
    queued = first.submit(spec)
    first.close()

    second = make_coordinator(state, drivers={"local": gated_driver})
    done = second.get(finished.job_id)
    assert done.state == JobState.DONE and done.metrics == {"accuracy": 0.5}
    assert done.spec == spec.__class__(**{**spec.__dict__, "placement": "local"})
    failed = second.get(running.job_id)
    assert failed.state == JobState.FAILED
    assert failed.reason == RESTART_REASON
    assert failed.epoch == 1 and failed.step >= before.step
    assert failed.created_at == before.created_at
    # The queued job never started: the new coordinator runs it.
    gated_driver.release.set()
    assert second.wait(queued.job_id, timeout=10).state == JobState.DONE
    assert [job.job_id for job in second.jobs()] == [finished.job_id, running.job_id,
                                                     queued.job_id]
    events = second.store.events(running.job_id)
    assert events[-1][0] == "failed" and ("training", 1) in {(s, e) for s, e, _ in events}


def test_a_state_change_is_synced_to_disk_and_a_step_within_an_epoch_is_not(
        spec: JobSpec, tmp_path: Path) -> None:
    from dataclasses import replace

    from coordinator.job_store import JobStore
    from coordinator.jobs import Job

    store = JobStore(tmp_path / "state")
    job = Job("j1", spec)
    store.save(job)  # a new job: its first state is synced
    assert store.synchronous() == 2
    training = replace(job, state=JobState.TRAINING, epoch=1)
    store.save(training)
    assert store.synchronous() == 2
    for step in range(1, 4):
        store.save(replace(training, step=step, loss=1.0 / step))
        assert store.synchronous() == 1  # progress of a step: committed, not fsynced
    store.save(replace(training, epoch=2, step=4))  # the next epoch is a milestone
    assert store.synchronous() == 2
    store.close()
    # Every save was committed all the same: a reopened store has them.
    again = JobStore(tmp_path / "state")
    assert again.get("j1").epoch == 2 and again.get("j1").step == 4
    assert [step for _, _, step in again.events("j1")] == [0, 0, 1, 2, 3, 4]
    again.close()


def test_a_resumable_job_is_queued_again_with_its_progress_and_the_others_fail(
        spec: JobSpec, tmp_path: Path) -> None:
    from dataclasses import replace

    from coordinator.job_store import JobStore
    from coordinator.jobs import Job

    store = JobStore(tmp_path / "state")
    mesh = replace(Job("m1", replace(spec, placement="mesh")), state=JobState.TRAINING,
                   epoch=2, step=14)
    local = replace(Job("l1", spec), state=JobState.TRAINING, epoch=1, step=3)
    for job in (mesh, local):
        store.save(job)
    requeued, failed = store.settle_interrupted(
        10.0, lambda job: job.spec.placement == "mesh")
    assert (requeued, failed) == (["m1"], ["l1"])
    again = store.get("m1")
    # Queued with where it was: the driver resumes it from its agents' checkpoints.
    assert again.state == JobState.QUEUED and (again.epoch, again.step) == (2, 14)
    assert store.get("l1").state == JobState.FAILED
    assert store.get("l1").reason == RESTART_REASON
