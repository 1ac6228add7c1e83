"""A whole PAC job on the mesh: epoch 1 on 2 stages x 2 agents, redistribution, then the
cache phase on all 4 agents. It must end where single-device training ends, move every
cache entry to exactly one owner intact, and release the backbone's memory."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import load_file

from coordinator.job_messages import spec_to_proto
from coordinator.jobs import JobSpec
from pac.cache.key import CacheKey
from pac.cache.store import ActivationCache
from pac.cluster.local_mesh import LocalMesh
from pac.engine.checkpoint import CHECKPOINT_FILE, join_shards
from pac.engine.export import WEIGHTS_FILE
from pac.engine.trainer import TrainConfig, Trainer
from pac.pipeline.entries import split_part_id
from pac.tasks import TaskSpec
from pac.wire.auth import token_metadata
from protos.v1 import coordinator_pb2 as pb
from protos.v1 import coordinator_pb2_grpc as pb_grpc

BATCH, SEED, LR, EPOCHS = 8, 5, 1e-2, 3


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    with LocalMesh(agents=4, run_dir=tmp_path_factory.mktemp("mesh"), planner=False) as running:
        yield running


def write_rows(path: Path, count: int) -> Path:
    rows = [
        {
            "text": f"{'good fine' if i % 2 else 'bad dull'} story {i} " + "very " * (i % 5),
            "label": "pos" if i % 2 else "neg",
        }
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_three_epochs_on_the_mesh_equal_one_device(
    mesh: LocalMesh, tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model_dir = tiny_model_dir("t5")
    data = write_rows(tmp_path / "train.jsonl", 28)  # 4 steps, the last one short
    layout = {
        "stages": [
            {"begin": 0, "end": 2, "devices": ["agent-0", "agent-1"], "shares": [1.0, 1.0]},
            {"begin": 2, "end": 4, "devices": ["agent-2", "agent-3"], "shares": [2.0, 1.0]},
        ],
        "micro_batches": 2,
    }
    spec = JobSpec(
        model_dir=str(model_dir),
        data_path=str(data),
        eval_path=str(data),
        task="classification",
        technique="parallel-adapters",
        # keep_cache: the agents would delete their caches when the job closes; this test
        # reads them afterwards. cache_chunk_bytes 1: the cache phase computes one row at a
        # time (its chunks of rows), and still equals one device.
        technique_settings={
            "layout": layout,
            "reduction": 4,
            "keep_cache": True,
            "cache_chunk_bytes": 1,
        },
        epochs=EPOCHS,
        batch_size=BATCH,
        learning_rate=LR,
        seed=SEED,
        placement="mesh",
        output_dir=str(tmp_path / "mesh-out"),
    )
    channel = grpc.insecure_channel(mesh.coordinator_address)
    metadata = token_metadata(mesh.join_token)
    stub = pb_grpc.CoordinatorStub(channel)
    job = stub.SubmitJob(pb.SubmitJobRequest(spec=spec_to_proto(spec)), metadata=metadata)
    states = [
        e.state for e in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), metadata=metadata)
    ]
    channel.close()
    assert states[-1] == pb.JOB_STATE_DONE, (mesh.run_dir / "logs" / "coordinator.log").read_text()[
        -3000:
    ]
    assert pb.JOB_STATE_REDISTRIBUTING in states

    # The same job on one device.
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

    # Redistribution: every (sample, stage) entry on exactly one agent, all of a sample's
    # entries on the same agent, every checksum intact.
    key = CacheKey.for_model_dir(model_dir, ",".join(reference.model.points), "fp16")
    holders: dict[str, set[str]] = {}
    entries: dict[str, int] = {}
    for agent in mesh.agent_names():
        cache = ActivationCache(mesh.run_dir / "cache" / agent / job.job_id, key)
        assert cache.verify_all() == len(cache)
        for entry in cache.sample_ids():
            entries[entry] = entries.get(entry, 0) + 1
            holders.setdefault(split_part_id(entry)[0], set()).add(agent)
    fingerprints = {s.fingerprint for s in reference.train_samples}
    assert set(holders) == fingerprints
    assert all(len(agents) == 1 for agents in holders.values())
    assert set(entries) == {f"{f}@{stage}" for f in fingerprints for stage in (0, 1)}
    assert all(count == 1 for count in entries.values())
    assert len({next(iter(a)) for a in holders.values()}) == 4  # every agent owns samples

    # Every agent checkpointed its piece of the side network's optimizer state at the end
    # of the last epoch (the cache phase shards it: ZeRO stage 1), with the parameters that
    # begin in it; together the pieces are the one-device optimizer's state.
    pieces: dict[str, torch.Tensor] = {}
    state_bytes = []
    for agent in mesh.agent_names():
        saved = load_file(str(mesh.run_dir / "cache" / agent / job.job_id / CHECKPOINT_FILE))
        assert saved.keys().isdisjoint(k for k in pieces if "@" in k)  # no piece twice
        pieces.update(saved)
        state_bytes.append(sum(t.nbytes for k, t in saved.items() if "@" in k))
    whole = join_shards(pieces, strict=True)
    names = {p: n for n, p in reference.model.named_parameters()}
    for param, state in reference.optimizer.state.items():
        name = names[param]
        torch.testing.assert_close(whole[name], param.detach(), atol=2e-5, rtol=1e-4)
        for key in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(
                whole[f"{name}::{key}"], state[key], atol=1e-6, rtol=1e-3, msg=f"{name} {key}"
            )
        assert float(whole[f"{name}::step"]) == float(state["step"])
    assert max(state_bytes) < sum(state_bytes) / 2  # no agent holds the whole state

    # Releasing the backbone lowered every agent's resident memory.
    records = [json.loads(line) for line in (tmp_path / "mesh-out" / "metrics.jsonl").open()]
    assert [r["epoch"] for r in records] == [1.0, 2.0, 3.0]
    # Where the job's time went beside the epochs' steps (a fixed layout: nothing was
    # profiled or planned): recorded with epoch 1, and each epoch's evaluation.
    phases = ("load_data", "open_job", "redistribute", "release")
    assert all(records[0][f"{phase}_seconds"] > 0 for phase in phases)
    assert "profile_seconds" not in records[0] and "redistribute_seconds" not in records[1]
    assert all(r["evaluate_seconds"] > 0 for r in records)
    # The bytes redistribution moved, and the planner's estimate of them (from the mean
    # token count: the samples' lengths differ, so it is close, not exact).
    moved = records[0]["redistribution_bytes"]
    predicted = records[0]["predicted_redistribution_bytes"]
    print(f"redistribution: {moved:.0f} bytes moved, {predicted:.0f} predicted")
    assert moved > 0 and abs(predicted - moved) <= 0.25 * moved
    for agent in mesh.agent_names():
        before = records[-1][f"rss_mb_before_release.{agent}"]
        after = records[-1][f"rss_mb_after_release.{agent}"]
        assert after < before, (agent, before, after)
