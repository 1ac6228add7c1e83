"""An agent that goes away mid-job: the job starts over on the agents still answering, from
the end of its last completed epoch (a parallel-adapters job rebuilds its cache first), and
ends where single-device training of the same job ends: no sample lost or counted twice.

The agent is mostly frozen (SIGSTOP) rather than killed: its peers then cannot finish the
epoch without it, so the restart happens whatever the timing, and the job's health checks
find it (heartbeats every 0.5 s, 3 may be missed); once it leaves (SIGTERM: it drains)."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import time
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
from pac.engine.checkpoint import CHECKPOINT_FILE
from pac.engine.export import WEIGHTS_FILE
from pac.engine.loading import load_model
from pac.engine.trainer import TrainConfig, Trainer
from pac.tasks import TaskSpec
from pac.wire.auth import token_metadata
from protos.v1 import coordinator_pb2 as pb
from protos.v1 import coordinator_pb2_grpc as pb_grpc

ROWS, BATCH, EPOCHS, SEED, LR = 80, 8, 3, 5, 1e-2
STEPS = ROWS // BATCH
# A gradient never above this on one device is rounding noise (see assert_equal).
INERT_GRADIENT = 1e-6
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


def run_losing_agent_2(
    mesh: LocalMesh,
    spec: JobSpec,
    when: Callable[[pb.JobProgress], bool],
    woken: Callable[[str], None] | None = None,
    signum: int = signal.SIGSTOP,
) -> list[pb.JobProgress]:
    """Submit ``spec``, send agent-2 ``signum`` (freeze it) at the first event ``when``
    accepts, watch the job to its end; then (``woken``) let agent-2 go on and call
    ``woken(job_id)``; then replace agent-2 with a fresh process for the next test."""
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
                    mesh.signal("agent-2", signum)
                    frozen = True
            assert frozen, "the job ended before agent-2 could be frozen"
        if woken is not None:
            mesh.signal("agent-2", signal.SIGCONT)
            woken(job.job_id)
    finally:
        with contextlib.suppress(ProcessLookupError):  # (SIGTERM: it may have exited)
            mesh.signal("agent-2", signal.SIGKILL)
        mesh.stop("agent-2", timeout_s=5)
        restarted = time.time()
        mesh.start("agent-2")
        # The new process registered (the registry may still list the old one as alive).
        mesh.wait_for(
            lambda: any(
                a.name == "agent-2" and a.registered_unix >= restarted for a in mesh.status()
            ),
            "the new agent-2 to register",
            timeout_s=60,
        )
        mesh.wait_for_agents(AGENTS, timeout_s=30)
    return events


def one_device(
    model_dir: Path, data: Path, out: Path, technique: str
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """The same job trained on one device: its trained parameters, and the names of those
    whose gradient was never above ``INERT_GRADIENT`` (see :func:`assert_equal`)."""
    reference = Trainer(
        TrainConfig(
            model_dir=model_dir, train_path=data, eval_path=data,
            task=TaskSpec("classification"), technique=technique,
            technique_settings={"reduction": 4}, epochs=EPOCHS, batch_size=BATCH,
            learning_rate=LR, seed=SEED, out_dir=out,
        )
    )
    largest: dict[str, float] = {}

    def note(name: str, param: torch.Tensor) -> None:
        if param.grad is not None:
            largest[name] = max(largest.get(name, 0.0), float(param.grad.abs().max()))

    for name, param in reference.model.named_parameters():
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(lambda p, name=name: note(name, p))
    reference.run()
    trained = reference.model.trainable_state_dict()
    return trained, {name for name in trained if largest.get(name, 0.0) < INERT_GRADIENT}


def assert_restarted_once(
    events: list[pb.JobProgress], out: Path, every: int = 0, epoch: int = 0
) -> dict[str, object]:
    """The job is DONE after one restart, on agent-0 and agent-1, from a state kept at an
    epoch's end or (``every``) at a multiple of ``every`` steps (in ``epoch`` if given);
    every epoch was evaluated once. Returns the restart's record."""
    assert events[-1].state == pb.JOB_STATE_DONE, events[-1]
    states = [e.state for e in events]
    restart = states.index(pb.JOB_STATE_PROFILING, states.index(pb.JOB_STATE_TRAINING))
    assert restart > 0  # PROFILING again after TRAINING: the job started over
    records = [json.loads(line) for line in (out / RESTARTS_FILE).read_text().splitlines()]
    assert len(records) == 1, records
    record = records[0]
    step, resumed, offset = record["resume_step"], record["resume_epoch"], record["resume_offset"]
    assert step == (resumed - 1) * STEPS + offset, record
    assert offset == 0 or (every and step % every == 0), record
    assert not epoch or resumed == epoch, record
    assert record["agents"] == ["agent-0", "agent-1"]
    assert str(record["why"]).startswith("agent(s) agent-2 ("), record
    # Every epoch was evaluated once, those after the restart with the restart counted.
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1.0, 2.0, 3.0]
    assert [m.get("restarts", 0.0) for m in metrics][resumed - 1 :] == [1.0] * (
        EPOCHS - resumed + 1
    )
    assert events[-1].metrics["restarts"] == 1.0
    plan = (out / "plan.txt").read_text()
    assert "agent-2" not in plan and "agent-0" in plan
    return record


def assert_equal(
    got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], inert: set[str]
) -> None:
    """The mesh's parameters equal one device's, except ``inert`` ones: those whose gradient
    is zero but for rounding (a T5 decoder's self-attention query with a one-token decoder
    input, whose softmax runs over one position: about 1e-8, against 1e-2 for the others).
    Adam scales that noise up to whole steps, differently wherever the rounding differs (on
    AVX2-only CPUs the mesh's and one device's do), and the query does not change the
    model's outputs; they are only checked to be there and finite."""
    assert got.keys() == expected.keys()
    assert len(inert) <= len(expected) // 4, sorted(inert)  # the comparison stays meaningful
    for name, value in expected.items():
        if name in inert:
            assert got[name].shape == value.shape and bool(torch.isfinite(got[name]).all())
            continue
        torch.testing.assert_close(got[name], value, atol=2e-5, rtol=1e-4, msg=name)


def test_a_job_frozen_in_its_cache_phase_restarts_from_the_step_kept_and_equals_one_device(
    mesh: LocalMesh, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model_dir, data = tiny_model_dir("t5"), write_rows(tmp_path / "train.jsonl")
    out = tmp_path / "mesh-out"
    spec = job_spec(model_dir, data, out, "parallel-adapters")
    spec.technique_settings["checkpoint_every"] = 3  # the state is kept every 3 steps too

    def closes_the_job_it_missed(job_id: str) -> None:
        """Woken after the job ended without it, agent-2 still held the job (nobody could
        close it): its next heartbeat learns that the job has ended, and it closes it."""
        log = mesh.run_dir / "logs" / "agent-2.log"
        mesh.wait_for(
            lambda: f"job {job_id} has ended, or goes on without this agent: closed"
            in log.read_text(),
            "agent-2 to close the job it missed",
            timeout_s=30,
        )
        held = mesh.run_dir / "cache" / "agent-2" / job_id
        assert [p.name for p in held.iterdir()] in ([], [CHECKPOINT_FILE])  # cache deleted

    # Frozen in the cache phase: the job restarts from the last state kept (past epoch 1),
    # agent-0 and agent-1 keep the cache entries they owned and rebuild agent-2's share
    # only, and it goes on from that step.
    events = run_losing_agent_2(
        mesh,
        spec,
        lambda e: e.state == pb.JOB_STATE_TRAINING and e.step >= STEPS + 4,
        woken=closes_the_job_it_missed,
    )
    record = assert_restarted_once(events, out, every=3)
    assert int(str(record["resume_step"])) > STEPS
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # The restart's restore, cache rebuild and redistribution are in its first epoch's record.
    resumed = metrics[int(str(record["resume_epoch"])) - 1]
    assert resumed["restore_seconds"] > 0 and "redistribute_seconds" in resumed
    # Every sample is either kept by the agents that stayed or rebuilt, never both: the
    # rebuild computes agent-2's share (the planner gave it about a third), not all.
    assert resumed["cached_samples"] + resumed["rebuilt_samples"] == ROWS, resumed
    assert 0 < resumed["rebuilt_samples"] < ROWS / 2 < resumed["cached_samples"], resumed
    log = (mesh.run_dir / "logs" / "coordinator.log").read_text()
    assert "restart 1 of 2 on agent-0, agent-1 from epoch" in log
    expected, inert = one_device(model_dir, data, tmp_path / "one-device", "parallel-adapters")
    assert_equal(load_file(str(out / WEIGHTS_FILE)), expected, inert)


def test_a_job_that_loses_an_agent_in_its_first_epoch_starts_over_and_equals_one_device(
    mesh: LocalMesh, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model_dir, data = tiny_model_dir("t5"), write_rows(tmp_path / "train.jsonl")
    out = tmp_path / "mesh-out"
    spec = job_spec(model_dir, data, out, "parallel-adapters")
    events = run_losing_agent_2(
        mesh, spec, lambda e: e.state == pb.JOB_STATE_TRAINING and e.epoch == 1 and e.step >= 2
    )
    # Nothing was kept yet: the job starts from its first step on the others.
    record = assert_restarted_once(events, out, epoch=1)
    assert record["resume_step"] == 0
    expected, inert = one_device(model_dir, data, tmp_path / "one-device", "parallel-adapters")
    assert_equal(load_file(str(out / WEIGHTS_FILE)), expected, inert)


def test_a_job_kept_in_the_middle_of_epoch_1_rebuilds_what_was_cached_and_equals_one_device(
    mesh: LocalMesh, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model_dir, data = tiny_model_dir("t5"), write_rows(tmp_path / "train.jsonl")
    out = tmp_path / "mesh-out"
    spec = job_spec(model_dir, data, out, "parallel-adapters")
    spec.technique_settings["checkpoint_every"] = 2
    # Epoch 1 is a round trip per step: frozen after step 5, the job stops at step 6 or 7.
    events = run_losing_agent_2(
        mesh, spec, lambda e: e.state == pb.JOB_STATE_TRAINING and e.epoch == 1 and e.step >= 5
    )
    # Restarted from step 4 or 6 of epoch 1: forward-only steps rebuild what the steps
    # before it had cached, then epoch 1 trains (and caches) on from there.
    record = assert_restarted_once(events, out, every=2, epoch=1)
    assert int(str(record["resume_step"])) >= 4
    expected, inert = one_device(model_dir, data, tmp_path / "one-device", "parallel-adapters")
    assert_equal(load_file(str(out / WEIGHTS_FILE)), expected, inert)


def test_a_pipeline_lora_job_an_agent_leaves_restarts_with_each_stage_s_optimizer_state(
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
    spec.technique_settings["checkpoint_every"] = 4
    # Each stage's device keeps its own stage's optimizer state: the restart gives every
    # device the whole state, and each takes its new stage's at its first step. agent-2
    # leaves (SIGTERM: it drains, answers NOT_SERVING and refuses new work, then exits).
    events = run_losing_agent_2(
        mesh,
        spec,
        lambda e: e.state == pb.JOB_STATE_TRAINING and e.step >= STEPS + 3,
        signum=signal.SIGTERM,
    )
    record = assert_restarted_once(events, out, every=4)
    assert int(str(record["resume_step"])) >= STEPS
    expected, inert = one_device(model_dir, data, tmp_path / "one-device", "lora")
    assert_equal(load_file(str(out / WEIGHTS_FILE)), expected, inert)


def test_the_cache_phase_calls_end_where_the_state_is_kept() -> None:
    from coordinator.drivers.mesh_calls import STEPS_PER_CALL, _window

    # Steps 10..19 kept every 3 steps: calls of 2, 3, 3 and 2 steps (ending after steps
    # 12, 15 and 18 done, where the coordinator exports the agents' state between steps).
    sizes, step = [], 10
    while step < 20:
        sizes.append(min(_window(step, 3), 20 - step))
        step += sizes[-1]
    assert sizes == [2, 3, 3, 2]
    assert _window(5, 0) == STEPS_PER_CALL and _window(0, 1000) == STEPS_PER_CALL
