"""Epoch 1 on real agent processes over gRPC: the losses of every step equal those of
single-device training (same seed, data order and global batch), for each layout."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import torch

from coordinator.job_messages import spec_to_proto
from coordinator.jobs import JobSpec
from pac.cluster.local_mesh import LocalMesh
from pac.data.batches import batches
from pac.data.collate import collate
from pac.engine.dataset import DataFields, load_samples, pad_id, resolve_task
from pac.engine.loading import load_model
from pac.engine.schedule import make_optimizer
from pac.tasks import TaskSpec
from pac.techniques import build_technique
from pac.wire.auth import token_metadata
from protos.v1 import coordinator_pb2 as pb
from protos.v1 import coordinator_pb2_grpc as pb_grpc

BATCH, SEED, LR, ROWS = 8, 3, 1e-2, 24


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with LocalMesh(agents=4, run_dir=tmp_path_factory.mktemp("mesh")) as running:
        yield running


def rows_file(path: Path) -> Path:
    rows = [
        {
            "text": f"{'good fine' if i % 2 else 'bad dull'} film number {i} " + "day " * (i % 4),
            "label": "pos" if i % 2 else "neg",
        }
        for i in range(ROWS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def reference_losses(model_dir: Path, data: Path) -> list[float]:
    """Single-device training with the same seed, data order, batch and optimizer."""
    loaded = load_model(model_dir)
    task = resolve_task(TaskSpec("classification"), data, DataFields())
    samples = load_samples(data, loaded, task, DataFields())
    torch.manual_seed(SEED)
    model = build_technique("parallel-adapters", loaded.family, task, {"reduction": 4})
    steps = -(-len(samples) // BATCH)
    optimizer, scheduler = make_optimizer(model.trainable_parameters(), LR, total_steps=steps)
    losses = []
    for group in batches(samples, BATCH, shuffle=True, seed=SEED, epoch=1):
        batch = collate(group, pad_id(loaded), task=task)
        loss = model.loss(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
    return losses


def run_on_mesh(mesh: LocalMesh, spec: JobSpec) -> list[float]:
    channel = grpc.insecure_channel(mesh.coordinator_address)
    stub = pb_grpc.CoordinatorStub(channel)
    metadata = token_metadata(mesh.join_token)
    job = stub.SubmitJob(pb.SubmitJobRequest(spec=spec_to_proto(spec)), metadata=metadata)
    losses: dict[int, float] = {}
    final = None
    for event in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), metadata=metadata):
        if event.state == pb.JOB_STATE_TRAINING and event.step > 0:
            losses[event.step] = event.loss
        final = event
    channel.close()
    assert final is not None and final.state == pb.JOB_STATE_DONE, final
    return [losses[step] for step in sorted(losses)]


def layout(stages: list[tuple[int, int, list[str], list[float]]], micro: int) -> dict[str, object]:
    return {
        "stages": [{"begin": b, "end": e, "devices": d, "shares": s} for b, e, d, s in stages],
        "micro_batches": micro,
    }


LAYOUTS = {
    "1x1": lambda n: layout([(0, n, ["agent-0"], [1.0])], 2),
    "2x1": lambda n: layout([(0, n // 2, ["agent-0"], [1.0]), (n // 2, n, ["agent-1"], [1.0])], 2),
    "2x2": lambda n: layout(
        [
            (0, n // 2, ["agent-0", "agent-1"], [2.0, 1.0]),
            (n // 2, n, ["agent-2", "agent-3"], [1.0, 1.0]),
        ],
        2,
    ),
}


@pytest.mark.parametrize("layout_name", ["1x1", "2x1", "2x2"])
@pytest.mark.parametrize("family", ["t5", "gpt2"])
def test_epoch_one_on_agents_equals_one_device(
    mesh: LocalMesh,
    family: str,
    layout_name: str,
    tiny_model_dir: Callable[[str], Path],
    tmp_path: Path,
) -> None:
    model_dir = tiny_model_dir(family)
    data = rows_file(tmp_path / "train.jsonl")
    blocks = len(load_model(model_dir).family.blocks())
    spec = JobSpec(
        model_dir=str(model_dir),
        data_path=str(data),
        task="classification",
        technique="parallel-adapters",
        technique_settings={"layout": LAYOUTS[layout_name](blocks), "reduction": 4},
        epochs=1,
        batch_size=BATCH,
        learning_rate=LR,
        seed=SEED,
        placement="mesh",
        output_dir=str(tmp_path / "out"),
    )
    expected = reference_losses(model_dir, data)
    assert run_on_mesh(mesh, spec) == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_the_planner_places_the_job(
    mesh: LocalMesh, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    """Without a fixed layout the agents measure their blocks and links, the planner
    service cuts and groups, and training is still exact."""
    model_dir = tiny_model_dir("bert")
    data = rows_file(tmp_path / "train.jsonl")
    spec = JobSpec(
        model_dir=str(model_dir),
        data_path=str(data),
        task="classification",
        technique="parallel-adapters",
        technique_settings={"reduction": 4},
        epochs=1,
        batch_size=BATCH,
        micro_batches=2,
        learning_rate=LR,
        seed=SEED,
        placement="mesh",
        output_dir=str(tmp_path / "out"),
    )
    expected = reference_losses(model_dir, data)
    assert run_on_mesh(mesh, spec) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    report = (tmp_path / "out" / "plan.txt").read_text()
    assert f"planned by {mesh.services['planner'].address}" in report
    agents = re.findall(r"agent (\S+): ([\d.]+) ms per sample per block", report)
    assert sorted(name for name, _ in agents) == sorted(mesh.agent_names())
    assert all(float(ms) > 0 for _, ms in agents)
    links = re.findall(r"link (\S+) - (\S+): (\d+) Mbit/s", report)
    assert len({frozenset((a, b)) for a, b, _ in links}) == 6  # every pair of 4, once
    assert all(int(mbit) > 0 for _, _, mbit in links)
    # The seconds of measuring, probing and planning are in epoch 1's metrics.
    [record] = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").open()]
    assert all(record[f"{p}_seconds"] > 0 for p in ("profile", "probe_links", "plan"))
