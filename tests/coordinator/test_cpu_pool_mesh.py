"""Agents pinned to one shared core (``pac agent --cpus``): they report one CPU pool, one of
them measures for all, the planner trains on one of them (the others would only share its
core and add messages), and the job still ends where single-device training ends."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import grpc
from safetensors.torch import load_file

from coordinator.job_messages import spec_to_proto
from pac.cluster.local_mesh import LocalMesh
from pac.engine.export import WEIGHTS_FILE
from pac.wire.auth import token_metadata
from protos.v1 import coordinator_pb2 as pb
from protos.v1 import coordinator_pb2_grpc as pb_grpc
from tests.coordinator.test_restarts import assert_equal, job_spec, one_device, write_rows


def test_agents_on_one_core_are_planned_as_one_and_equal_one_device(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    model_dir, data = tiny_model_dir("t5"), write_rows(tmp_path / "train.jsonl")
    out = tmp_path / "out"
    spec = job_spec(model_dir, data, out, "parallel-adapters")
    del spec.technique_settings["layout"]  # planned: the planner chooses the agents
    with LocalMesh(agents=3, run_dir=tmp_path / "mesh", planner=False, agent_cpus="0") as mesh:
        pools = {a.name: (a.profile.cpu_pool, a.profile.cpu_cores) for a in mesh.status()}
        assert len(pools) == 3 and len(set(pools.values())) == 1, pools
        pool, cores = pools["agent-0"]
        assert pool.endswith(":cpus=0") and cores == 1
        auth = token_metadata(mesh.join_token)
        with grpc.insecure_channel(mesh.coordinator_address) as channel:
            stub = pb_grpc.CoordinatorStub(channel)
            job = stub.SubmitJob(pb.SubmitJobRequest(spec=spec_to_proto(spec)), metadata=auth)
            events = list(stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), metadata=auth,
                                        timeout=180))
        log = (mesh.run_dir / "logs" / "coordinator.log").read_text()
    assert events[-1].state == pb.JOB_STATE_DONE, events[-1]
    plan = (out / "plan.txt").read_text()
    assert f"CPU pool {pool!r} (1 cores) is shared by 3 devices: planned on 1 of them" in plan
    assert plan.count("measured by agent-0, which shares its CPU cores") == 2
    # One agent trained: only it released a backbone.
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    released = [k for k in record if k.startswith("rss_mb_before_release.")]
    assert len(released) == 1, released
    assert "profiles measured earlier" not in log
    expected, inert = one_device(model_dir, data, tmp_path / "one-device", "parallel-adapters")
    assert_equal(load_file(str(out / WEIGHTS_FILE)), expected, inert)
