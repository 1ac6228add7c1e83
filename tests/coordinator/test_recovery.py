"""A coordinator that dies in the middle of a mesh job: the next one queues the job again,
waits for its agents to register, resumes it from the newest complete checkpoint they hold
(the old coordinator's memory is gone) and closes the attempt they still held open; the job
ends where single-device training of it ends."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
from safetensors.torch import load_file

from coordinator.drivers.mesh_recovery import ATTEMPT_FILE
from coordinator.drivers.mesh_restart import RESTARTS_FILE
from coordinator.job_messages import spec_to_proto
from pac.cluster.local_mesh import LocalMesh
from pac.engine.export import WEIGHTS_FILE
from pac.wire.auth import token_metadata
from protos.v1 import coordinator_pb2 as pb
from protos.v1 import coordinator_pb2_grpc as pb_grpc
from tests.coordinator.test_restarts import (
    AGENTS,
    ROWS,
    STEPS,
    assert_equal,
    job_spec,
    one_device,
    write_rows,
)


def test_a_job_a_coordinator_crash_interrupted_resumes_from_its_agents_checkpoints(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model_dir, data = tiny_model_dir("t5"), write_rows(tmp_path / "train.jsonl")
    out = tmp_path / "mesh-out"
    spec = job_spec(model_dir, data, out, "parallel-adapters")
    spec.technique_settings["checkpoint_every"] = 3  # the agents checkpoint every 3 steps
    with LocalMesh(
        agents=3, run_dir=tmp_path / "mesh", planner=False, heartbeat_interval_s=0.5
    ) as mesh:
        auth = token_metadata(mesh.join_token)
        with grpc.insecure_channel(mesh.coordinator_address) as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            job = stub.SubmitJob(pb.SubmitJobRequest(spec=spec_to_proto(spec)), metadata=auth)
            for event in stub.WatchJob(
                pb.WatchJobRequest(job_id=job.job_id), metadata=auth, timeout=120
            ):
                # In the cache phase, past a checkpoint: the coordinator dies (SIGKILL: it
                # closes nothing, the agents keep the job open).
                if event.state == pb.JOB_STATE_TRAINING and event.step >= STEPS + 4:
                    mesh.signal("coordinator", signal.SIGKILL)
                    break
        mesh.stop("coordinator")
        assert json.loads((out / ATTEMPT_FILE).read_text())["attempt"] == job.job_id
        mesh.start("coordinator")
        mesh.wait_for_agents(AGENTS, timeout_s=30)
        with grpc.insecure_channel(mesh.coordinator_address) as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            events = list(
                stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), metadata=auth, timeout=180)
            )
        assert events[-1].state == pb.JOB_STATE_DONE, events[-1]
        [record] = [json.loads(line) for line in (out / RESTARTS_FILE).read_text().splitlines()]
        assert record["why"] == "the coordinator restarted during the job"
        step = int(record["resume_step"])
        assert step > STEPS and (step % 3 == 0 or step % STEPS == 0), record
        # A new attempt id (past the one the agents held open), which they were told to
        # close, keeping their caches: the new attempt took them over (past epoch 1).
        assert json.loads((out / ATTEMPT_FILE).read_text())["attempt"] == f"{job.job_id}-r1"
        for agent in AGENTS:
            log = (mesh.run_dir / "logs" / f"{agent}.log").read_text()
            assert f"job {job.job_id}-r1 took over the activation cache of {job.job_id}\n" in (
                log
            ), agent
            assert f"job {job.job_id} closed: its activation cache" not in log, agent
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        resumed = metrics[int(record["resume_epoch"]) - 1]
        # Every agent stayed: none of the cache is rebuilt.
        assert (resumed["cached_samples"], resumed["rebuilt_samples"]) == (ROWS, 0), resumed
        coordinator_log = (mesh.run_dir / "logs" / "coordinator.log").read_text()
        assert "queued again, to resume from their agents' checkpoints" in coordinator_log
    expected, inert = one_device(model_dir, data, tmp_path / "one-device", "parallel-adapters")
    assert_equal(load_file(str(out / WEIGHTS_FILE)), expected, inert)


def test_the_newest_step_whose_checkpoints_hold_every_trained_parameter_is_taken() -> None:
    import torch

    from coordinator.drivers.mesh_recovery import Found, newest_complete

    def part(names: list[str], value: float, state: bool = True) -> dict[str, torch.Tensor]:
        out = {n: torch.full((2,), value) for n in names}
        if state:
            out |= {f"{n}::exp_avg": torch.zeros(2) for n in names}
        return out

    found = Found(
        by_step={
            # Step 12: only stage 0's agent answered (stage 1's went away): incomplete.
            12: [part(["a"], 12.0)],
            # Step 9: both stages, replicas of stage 1 hold the same bits.
            9: [part(["a"], 9.0), part(["b"], 9.5), part(["b"], 9.5)],
            # Step 6: complete, but older.
            6: [part(["a", "b"], 6.0)],
            # Step 15: every parameter, but one without its optimizer state.
            15: [part(["a"], 15.0), part(["b"], 15.0, state=False)],
        },
        attempts={"job", "job-r3", "job-r1"},
    )
    chosen = newest_complete(found, ["a", "b"])
    assert chosen is not None
    step, state = chosen
    assert step == 9 and float(state["a"][0]) == 9.0 and float(state["b"][0]) == 9.5
    assert set(state) == {"a", "b", "a::exp_avg", "b::exp_avg"}
    assert newest_complete(found, ["a", "b", "c"]) is None
    assert found.next_attempt() == 4 and Found().next_attempt() == 1
