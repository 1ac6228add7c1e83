"""An agent that goes away mid-job: the job starts over on the agents still answering, from
the end of its last completed epoch (a parallel-adapters job rebuilds its cache first), and
ends where single-device training of the same job ends: no sample lost or counted twice.

The agent is frozen (SIGSTOP) rather than killed: its peers then cannot finish the epoch
without it, so the restart happens whatever the timing, and the job's health checks find it
(heartbeats every 0.5 s, 3 may be missed)."""

from __future__ import annotations

import json
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import load_file

from coordinator.drivers.mesh_restart import RESTARTS_FILE
from coordinator.job_messages import spec_to_proto
from coordinator.jobs import JobSpec
from pac.cluster.local_mesh import LocalMesh
from pac.engine.export import WEIGHTS_FILE
from pac.engine.loading import load_model
from pac.engine.trainer import TrainConfig, Trainer
from pac.tasks import TaskSpec
from pac.wire.auth import token_metadata
from protos.v1 import coordinator_pb2 as pb
from protos.v1 import coordinator_pb2_grpc as pb_grpc

ROWS, BATCH, EPOCHS, SEED, LR = 80, 8, 3, 5, 1e-2
STEPS = ROWS // BATCH
AGENTS = ["agent-0", "agent-1", "agent-2"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    run_dir = tmp_path_factory.mktemp("mesh")
    with LocalMesh(agents=3, run_dir=run_dir, planner=False, heartbeat_interval_s=0.5) as running:
        yield running


def write_rows(path: Path) -> Path:
    rows = [
        {"text": f"{'good fine' if i % 2 else 'bad dull'} tale {i} " + "so " * (i % 4),
         "label": "pos" if i % 2 else "neg"}
        for i in range(ROWS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def job_spec(model_dir: Path, data: Path, out: Path, technique: str) -> JobSpec:
    """Stage 0 on agent-0, stage 1 on agent-1 and agent-2 (so that the restart needs a new
    plan: the fixed layout names the agent that went away)."""
    blocks = len(load_model(model_dir).family.blocks())
    layout = {
        "stages": [
            {"begin": 0, "end": blocks // 2, "devices": ["agent-0"], "shares": [1.0]},
            {"begin": blocks // 2, "end": blocks, "devices": ["agent-1", "agent-2"],
             "shares": [1.0, 1.0]},
        ],
        "micro_batches": 2,
    }
    return JobSpec(
        model_dir=str(model_dir), data_path=str(data), eval_path=str(data),
        task="classification", technique=technique,
        technique_settings={"layout": layout, "reduction": 4},
        epochs=EPOCHS, batch_size=BATCH, learning_rate=LR, seed=SEED,
        placement="mesh", output_dir=str(out),
    )


def run_freezing_agent_2(
    mesh: LocalMesh, spec: JobSpec, when: Callable[[pb.JobProgress], bool]
) -> list[pb.JobProgress]:
    """Submit ``spec``, freeze agent-2 at the first event ``when`` accepts, watch the job to
    its end; then replace agent-2 with a fresh process for the next test."""
    auth = token_metadata(mesh.join_token)
    events: list[pb.JobProgress] = []
    try:
        with grpc.insecure_channel(mesh.coordinator_address) as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            job = stub.SubmitJob(pb.SubmitJobRequest(spec=spec_to_proto(spec)), metadata=auth)
            frozen = False
            for event in stub.WatchJob(
                pb.WatchJobRequest(job_id=job.job_id), metadata=auth, timeout=180
            ):
                events.append(event)
                if not frozen and when(event):
                    mesh.signal("agent-2", signal.SIGSTOP)
                    frozen = True
            assert frozen, "the job ended before agent-2 could be frozen"
    finally:
        mesh.signal("agent-2", signal.SIGKILL)
        mesh.stop("agent-2", timeout_s=5)
        mesh.start("agent-2")
        mesh.wait_for_agents(AGENTS, timeout_s=30)
    return events


def one_device(model_dir: Path, data: Path, out: Path, technique: str) -> dict[str, torch.Tensor]:
    reference = Trainer(
        TrainConfig(
            model_dir=model_dir, train_path=data, eval_path=data,
            task=TaskSpec("classification"), technique=technique,
            technique_settings={"reduction": 4}, epochs=EPOCHS, batch_size=BATCH,
            learning_rate=LR, seed=SEED, out_dir=out,
        )
    )
    reference.run()
    return reference.model.trainable_state_dict()


def assert_restarted_once(events: list[pb.JobProgress], out: Path, resume_epoch: int) -> None:
    assert events[-1].state == pb.JOB_STATE_DONE, events[-1]
    states = [e.state for e in events]
    restart = states.index(pb.JOB_STATE_PROFILING, states.index(pb.JOB_STATE_TRAINING))
    assert restart > 0  # PROFILING again after TRAINING: the job started over
    records = [json.loads(line) for line in (out / RESTARTS_FILE).read_text().splitlines()]
    assert len(records) == 1, records
    assert records[0]["resume_epoch"] == resume_epoch
    assert records[0]["resume_step"] == (resume_epoch - 1) * STEPS
    assert records[0]["agents"] == ["agent-0", "agent-1"]
    assert str(records[0]["why"]).startswith("agent(s) agent-2 ("), records[0]
    # Every epoch was evaluated once, the interrupted one after the restart.
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1.0, 2.0, 3.0]
    assert [m.get("restarts", 0.0) for m in metrics][resume_epoch - 1 :] == [1.0] * (
        EPOCHS - resume_epoch + 1
    )
    assert events[-1].metrics["restarts"] == 1.0
    plan = (out / "plan.txt").read_text()
    assert "agent-2" not in plan and "agent-0" in plan


def assert_equal(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=2e-5, rtol=1e-4, msg=name)


def test_a_parallel_adapters_job_restarts_from_its_last_epoch_and_equals_one_device(
    mesh: LocalMesh, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model_dir, data = tiny_model_dir("t5"), write_rows(tmp_path / "train.jsonl")
    out = tmp_path / "mesh-out"
    spec = job_spec(model_dir, data, out, "parallel-adapters")
    # Frozen once epoch 2 (the cache phase) has begun: the job restarts from epoch 1's end,
    # rebuilds the cache on agent-0 and agent-1, and trains epochs 2 and 3 from it.
    events = run_freezing_agent_2(
        mesh, spec, lambda e: e.state == pb.JOB_STATE_TRAINING and e.epoch == 2
    )
    assert_restarted_once(events, out, resume_epoch=2)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # The restart's restore, cache rebuild and redistribution are in epoch 2's record.
    assert metrics[1]["restore_seconds"] > 0 and "redistribute_seconds" in metrics[1]
    log = (mesh.run_dir / "logs" / "coordinator.log").read_text()
    assert "restart 1 of 2 on agent-0, agent-1 from epoch 2" in log
    expected = one_device(model_dir, data, tmp_path / "one-device", "parallel-adapters")
    assert_equal(load_file(str(out / WEIGHTS_FILE)), expected)


def test_a_job_that_loses_an_agent_in_its_first_epoch_starts_over_and_equals_one_device(
    mesh: LocalMesh, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model_dir, data = tiny_model_dir("t5"), write_rows(tmp_path / "train.jsonl")
    out = tmp_path / "mesh-out"
    spec = job_spec(model_dir, data, out, "parallel-adapters")
    events = run_freezing_agent_2(
        mesh, spec, lambda e: e.state == pb.JOB_STATE_TRAINING and e.epoch == 1 and e.step >= 2
    )
    # Nothing was kept yet: the job starts from its first step on the others.
    assert_restarted_once(events, out, resume_epoch=1)
    expected = one_device(model_dir, data, tmp_path / "one-device", "parallel-adapters")
    assert_equal(load_file(str(out / WEIGHTS_FILE)), expected)


def test_a_pipeline_lora_job_restarts_with_each_stage_s_optimizer_state(
    mesh: LocalMesh, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    # LoRA trains the backbone at its own dropout: at 0, so that the two runs can agree.
    model_dir = tmp_path / "t5-no-dropout"
    shutil.copytree(tiny_model_dir("t5"), model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps(config | {"dropout_rate": 0.0}))
    data = write_rows(tmp_path / "train.jsonl")
    out = tmp_path / "mesh-out"
    spec = job_spec(model_dir, data, out, "lora")
    events = run_freezing_agent_2(
        mesh, spec, lambda e: e.state == pb.JOB_STATE_TRAINING and e.epoch == 2
    )
    assert_restarted_once(events, out, resume_epoch=2)
    expected = one_device(model_dir, data, tmp_path / "one-device", "lora")
    assert_equal(load_file(str(out / WEIGHTS_FILE)), expected)
