"""The cache phase on agents without a coordinator round trip per step: the coordinator
sends each agent its rows for a range of steps at once and the agents report every step
as it ends. Fewer calls than steps, progress still per step, and the job still ends where
single-device training ends; cancelling mid-epoch stops the agents cleanly."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from coordinator.job_messages import spec_to_proto
from coordinator.jobs import JobSpec
from pac.cluster.local_mesh import LocalMesh, scrape_metrics
from pac.engine.checkpoint import CHECKPOINT_FILE
from pac.engine.export import WEIGHTS_FILE
from pac.engine.loading import load_model
from pac.engine.trainer import TrainConfig, Trainer
from pac.tasks import TaskSpec
from pac.wire.auth import token_metadata
from protos.v1 import coordinator_pb2 as pb
from protos.v1 import coordinator_pb2_grpc as pb_grpc

BATCH, SEED, LR, EPOCHS, ROWS = 8, 5, 1e-2, 3, 40
STEPS = ROWS // BATCH


def write_rows(path: Path) -> Path:
    rows = [
        {
            "text": f"{'good fine' if i % 2 else 'bad dull'} tale {i} " + "so " * (i % 4),
            "label": "pos" if i % 2 else "neg",
        }
        for i in range(ROWS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def job_spec(model_dir: Path, data: Path, out: Path) -> JobSpec:
    blocks = len(load_model(model_dir).family.blocks())
    layout = {
        "stages": [
            {"begin": 0, "end": blocks // 2, "devices": ["agent-0"], "shares": [1.0]},
            {"begin": blocks // 2, "end": blocks, "devices": ["agent-1"], "shares": [1.0]},
        ],
        "micro_batches": 2,
    }
    return JobSpec(
        model_dir=str(model_dir),
        data_path=str(data),
        eval_path=str(data),
        task="classification",
        technique="parallel-adapters",
        technique_settings={"layout": layout, "reduction": 4, "checkpoint_every": 2},
        epochs=EPOCHS,
        batch_size=BATCH,
        learning_rate=LR,
        seed=SEED,
        placement="mesh",
        output_dir=str(out),
    )


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with LocalMesh(agents=2, run_dir=tmp_path_factory.mktemp("mesh"), planner=False) as running:
        yield running


def run_job(mesh: LocalMesh, spec: JobSpec, cancel_at: tuple[int, int] | None = None) -> Run:
    """Submit ``spec`` and watch it to the end; with ``cancel_at=(epoch, step)`` cancel it
    when that step is reported. Returns the job id and its events."""
    channel = grpc.insecure_channel(mesh.coordinator_address)
    metadata = token_metadata(mesh.join_token)
    stub = pb_grpc.CoordinatorStub(channel)
    job = stub.SubmitJob(pb.SubmitJobRequest(spec=spec_to_proto(spec)), metadata=metadata)
    events = []
    for event in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), metadata=metadata):
        events.append(event)
        if cancel_at and (event.epoch, event.step) == cancel_at:
            stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id), metadata=metadata)
    channel.close()
    return Run(job.job_id, events)


@dataclass
class Run:
    job_id: str
    events: list[pb.JobProgress]


def calls_per_epoch(mesh: LocalMesh, job_id: str) -> dict[int, tuple[int, int]]:
    """{epoch: (steps, calls to agents)} from the driver's per-epoch log line."""
    text = (mesh.run_dir / "logs" / "coordinator.log").read_text()
    pattern = rf"job {job_id} epoch (\d+): (\d+) steps in (\d+) calls to agents"
    return {int(e): (int(s), int(c)) for e, s, c in re.findall(pattern, text)}


@pytest.mark.parametrize("all_reduce", ["ring", "direct"])
def test_cached_epochs_take_fewer_calls_than_steps_and_equal_one_device(
    all_reduce: str, mesh: LocalMesh, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model_dir = tiny_model_dir("t5")
    data = write_rows(tmp_path / "train.jsonl")
    spec = job_spec(model_dir, data, tmp_path / "mesh-out")
    spec.technique_settings["all_reduce"] = all_reduce
    # (No state kept every K steps: the agents' calls would end there. See test_restarts.)
    del spec.technique_settings["checkpoint_every"]
    run = run_job(mesh, spec)
    assert run.events[-1].state == pb.JOB_STATE_DONE, run.events[-1]

    calls = calls_per_epoch(mesh, run.job_id)
    assert set(calls) == {1, 2, 3}
    assert calls[1] == (STEPS, 2 * 2 * STEPS)  # epoch 1: send + RunStep, per agent per step
    for epoch in (2, 3):
        steps, made = calls[epoch]
        assert steps == STEPS and made < steps  # one send + one RunSteps per agent
    # Progress is still reported step by step, with the mini-batch's loss.
    reported = sorted({e.step for e in run.events if e.state == pb.JOB_STATE_TRAINING and e.step})
    assert reported == list(range(1, EPOCHS * STEPS + 1))
    assert all(e.loss > 0 for e in run.events if e.state == pb.JOB_STATE_TRAINING and e.step)

    reference = Trainer(
        TrainConfig(
            model_dir=model_dir,
            train_path=data,
            eval_path=data,
            task=TaskSpec("classification"),
            technique="parallel-adapters",
            technique_settings={"reduction": 4},
            epochs=EPOCHS,
            batch_size=BATCH,
            learning_rate=LR,
            seed=SEED,
            out_dir=tmp_path / "one-device",
        )
    )
    reference.run()
    expected = reference.model.trainable_state_dict()
    got = load_file(str(tmp_path / "mesh-out" / WEIGHTS_FILE))
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, atol=2e-5, rtol=1e-4, msg=name)


def test_a_cached_epoch_stops_between_steps_when_cancelled(
    mesh: LocalMesh, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model_dir = tiny_model_dir("t5")
    data = write_rows(tmp_path / "train.jsonl")
    stop = (2, STEPS + 2)  # the second step of the first cached epoch
    run = run_job(mesh, job_spec(model_dir, data, tmp_path / "out"), cancel_at=stop)
    assert run.events[-1].state == pb.JOB_STATE_CANCELLED, run.events[-1]
    steps = [e.step for e in run.events if e.state == pb.JOB_STATE_TRAINING and e.step]
    assert stop[1] <= max(steps) < EPOCHS * STEPS
    # Checkpoints every 2 steps kept being written inside the cached range.
    for agent in mesh.agent_names():
        path = mesh.run_dir / "cache" / agent / run.job_id / CHECKPOINT_FILE
        with safe_open(str(path), "pt") as saved:
            step = int(saved.metadata()["step"])
        # (The agents may run a step or two past the last one reported before the cancel
        # reaches them; they must not run to the job's end.)
        assert step % 2 == 0 and STEPS < step < EPOCHS * STEPS, (agent, step)
        # The job is closed: its activation cache is gone from the agent, the checkpoint
        # beside it stays.
        assert [p.name for p in path.parent.iterdir()] == [CHECKPOINT_FILE]
        metrics = scrape_metrics(mesh.services[agent].ports["metrics"])
        assert metrics["pac_agent_cache_bytes"] == 0.0
    # The agents are free again: the next job runs to the end.
    again = run_job(mesh, replace(job_spec(model_dir, data, tmp_path / "again"), epochs=2))
    assert again.events[-1].state == pb.JOB_STATE_DONE, again.events[-1]
