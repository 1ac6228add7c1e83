"""A real local mesh (coordinator + 2 agents + planner as processes): registration,
`pac status`, `pac submit --watch`, an agent going silent, a coordinator restart."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from pac.cli import main
from pac.cluster.local_mesh import LocalMesh
from pac.wire.auth import token_metadata
from protos.v1 import coordinator_pb2 as pb
from protos.v1 import coordinator_pb2_grpc as pb_grpc

AGENTS = ["agent-0", "agent-1"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    run_dir = tmp_path_factory.mktemp("mesh")
    # Heartbeats every 0.5 s, lost after 3 missed: liveness shows within seconds.
    with LocalMesh(agents=2, run_dir=run_dir, heartbeat_interval_s=0.5,
                   missed_heartbeats=3) as started:
        yield started


def jobs_of(mesh: LocalMesh) -> list[pb.Job]:
    with grpc.insecure_channel(mesh.coordinator_address) as channel:
        return list(pb_grpc.JobListStub(channel).ListJobs(
            pb.ListJobsRequest(), metadata=token_metadata(mesh.join_token), timeout=5).jobs)


def metric(mesh: LocalMesh, line_start: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{mesh.coordinator.ports['metrics']}/metrics").text
    [line] = [line for line in text.splitlines() if line.startswith(line_start)]
    return float(line.split()[-1])


def test_every_agent_is_registered_and_listed(mesh: LocalMesh,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert sorted(a.name for a in mesh.status()) == AGENTS
    assert all(a.state == pb.AGENT_STATE_ALIVE for a in mesh.status())
    described = json.loads((mesh.run_dir / "cluster.json").read_text())
    assert {s["name"] for s in described["services"]} >= {"coordinator", *AGENTS}
    assert all(s["pid"] > 0 for s in described["services"])
    assert main(["status", "--cluster", str(mesh.run_dir)]) == 0
    out = capsys.readouterr().out
    for name in AGENTS:
        [row] = [line for line in out.splitlines() if line.startswith(name)]
        assert "alive" in row and mesh.services[name].address in row
    rest = httpx.get(f"{mesh.rest_url}/v1/agents").json()
    assert sorted(a["name"] for a in rest) == AGENTS
    assert metric(mesh, 'pac_coordinator_agents{state="live"}') == 2.0
    for name in AGENTS:
        assert (mesh.run_dir / "logs" / f"{name}.log").stat().st_size > 0


def test_pac_submit_watch_trains_to_done(mesh: LocalMesh, tiny_model_dir: Callable[[str], Path],
                                         toy_data: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--cluster", str(mesh.run_dir), "--model", str(tiny_model_dir("bert")),
              "--data", str(toy_data), "--task", "classification", "--max-length", "16"]
    assert main(["submit", *common, "--technique", "prompt-tuning"]) == 2
    assert "technique: unknown technique 'prompt-tuning'" in capsys.readouterr().err
    code = main(["submit", *common, "--eval", str(toy_data), "--epochs", "2",
                 "--batch-size", "4", "--micro-batches", "2", "--watch"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    job_id = lines[0].split()[1]
    assert f"job {job_id} training epoch 1" in lines and f"job {job_id} training epoch 2" in lines
    assert lines[-1].startswith(f"job {job_id} done (step 8,") and "accuracy" in lines[-1]
    [job] = [j for j in jobs_of(mesh) if j.job_id == job_id]
    assert job.state == pb.JOB_STATE_DONE
    assert (Path(mesh.run_dir) / "state" / "jobs" / job_id / "adapters.safetensors").is_file()
    assert metric(mesh, f'pac_job_step{{job="{job_id}"}}') == 8.0
    assert main(["jobs", "--cluster", str(mesh.run_dir)]) == 0
    assert job_id in capsys.readouterr().out


def test_an_agent_that_stops_heartbeating_is_marked_lost(mesh: LocalMesh) -> None:
    mesh.signal("agent-1", signal.SIGSTOP)
    try:
        def lost() -> bool:
            states = {a.name: a.state for a in mesh.status(include_lost=True)}
            return states.get("agent-1") == pb.AGENT_STATE_LOST
        mesh.wait_for(lost, "agent-1 to be marked lost", timeout_s=15)
        assert [a.name for a in mesh.status()] == ["agent-0"]
        assert metric(mesh, 'pac_coordinator_agent_up{agent="agent-1"}') == 0.0
    finally:
        mesh.signal("agent-1", signal.SIGCONT)
    mesh.wait_for_agents(AGENTS, timeout_s=20)


def test_coordinator_restart_agents_reregister_and_jobs_are_intact(
        mesh: LocalMesh, tiny_model_dir: Callable[[str], Path], toy_data: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # A long job, caught training when the coordinator stops.
    assert main(["submit", "--cluster", str(mesh.run_dir), "--model",
                 str(tiny_model_dir("bert")), "--data", str(toy_data), "--task",
                 "classification", "--epochs", "500", "--batch-size", "4",
                 "--max-restarts", "0"]) == 0  # (resumed, not failed, otherwise)
    running_id = capsys.readouterr().out.split()[1]
    mesh.wait_for(lambda: any(j.job_id == running_id and j.state == pb.JOB_STATE_TRAINING
                              and j.step > 0 for j in jobs_of(mesh)),
                  "the long job to train", timeout_s=60)
    before = {job.job_id: job for job in jobs_of(mesh)}
    first_instance = httpx.get(f"{mesh.rest_url}/healthz").json()["instance"]

    assert mesh.stop("coordinator") == 0  # SIGTERM: a clean exit
    mesh.start("coordinator")
    mesh.wait_for_agents(AGENTS, timeout_s=30)
    assert httpx.get(f"{mesh.rest_url}/healthz").json()["instance"] != first_instance

    after = {job.job_id: job for job in jobs_of(mesh)}
    assert set(after) == set(before)
    for job_id, job in before.items():
        if job_id == running_id:
            continue
        assert after[job_id] == job  # ended jobs: every field as recorded
    failed = after[running_id]
    assert failed.state == pb.JOB_STATE_FAILED
    assert failed.error == "coordinator restarted during the job"
    assert failed.epoch >= before[running_id].epoch >= 1
    assert failed.step >= before[running_id].step
    assert failed.spec == before[running_id].spec


def test_a_listed_agent_that_does_not_answer_is_left_out_of_the_job(
        mesh: LocalMesh, tiny_model_dir: Callable[[str], Path], toy_data: Path,
        tmp_path: Path) -> None:
    import threading

    from coordinator.driver import DriverContext
    from coordinator.drivers.mesh import MeshDriver
    from coordinator.jobs import Job, JobSpec
    from coordinator.registry import AgentLiveness, AgentRecord
    from pac.cluster.local_mesh import free_ports

    # The registry's view: the two real agents and a ghost it still lists as alive (it has
    # not missed its heartbeats yet) whose address nobody answers any more.
    listed = [(AgentRecord(a.agent_id, a.name, a.address, a.profile.SerializeToString(), 0, 0),
               AgentLiveness.ALIVE) for a in mesh.status()]
    [closed] = free_ports(1)
    ghost = AgentRecord("ghost-id", "ghost", f"127.0.0.1:{closed}",
                        listed[0][0].profile, 0, 0)
    listed.append((ghost, AgentLiveness.ALIVE))
    out = tmp_path / "out"
    out.mkdir()
    job = Job("ghost-job", JobSpec(
        model_dir=str(tiny_model_dir("bert")), data_path=str(toy_data), task="classification",
        epochs=2, batch_size=4, max_length=16, placement="mesh"), output_dir=str(out))
    driver = MeshDriver(DriverContext(join_token=mesh.join_token))
    result = driver.run(job, listed, lambda _: None, threading.Event())
    assert result.metrics["epoch"] == 2.0  # both epochs ran
    plan = (out / "plan.txt").read_text()
    assert "ghost" not in plan and "agent-0" in plan
    # The planner was told what each micro-batch size of the batch of 4 pads (the data's
    # lengths differ: one-sample micro-batches compute fewer tokens than the padded batch).
    tokens = next(line for line in plan.splitlines() if "tokens computed per micro-batch" in line)
    scales = dict(part.split(" rows ") for part in tokens.split(": ", 1)[1].split(", "))
    assert set(scales) == {"2", "1"} and 0 < float(scales["1"]) < 1


def test_pac_cluster_down_stops_every_process(mesh: LocalMesh) -> None:
    pids = [service.pid for service in mesh.services.values()]
    assert main(["cluster", "down", "--dir", str(mesh.run_dir)]) == 0
    for name, process in mesh._processes.items():
        code = process.wait(timeout=15)
        # SIGTERM: the coordinator and agents exit cleanly; none needed a SIGKILL.
        assert code == 0 if name != "planner" else code in (0, -signal.SIGTERM), name
    assert not (mesh.run_dir / "cluster.json").exists()
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    assert main(["cluster", "down", "--dir", str(mesh.run_dir)]) == 1  # nothing to stop


def test_an_agent_that_freezes_or_dies_mid_job_is_named_and_the_next_job_plans_around_it(
        tmp_path: Path, tiny_model_dir: Callable[[str], Path], toy_data: Path) -> None:
    from coordinator.job_messages import spec_to_proto
    from coordinator.jobs import JobSpec

    def spec(epochs: int, out: str, layout: dict[str, object] | None) -> pb.SubmitJobRequest:
        return pb.SubmitJobRequest(spec=spec_to_proto(JobSpec(
            model_dir=str(tiny_model_dir("bert")), data_path=str(toy_data),
            task="classification", epochs=epochs, batch_size=6, max_length=16,
            technique_settings={"layout": layout} if layout else {},
            # No restart on the agents left (tests/coordinator/test_restarts.py): fail.
            max_restarts=0, placement="mesh", output_dir=str(tmp_path / out))))

    # All three agents in the first jobs (the planner alone might leave one out).
    everyone = {"stages": [{"begin": 0, "end": 2, "devices": ["agent-0", "agent-1", "agent-2"],
                            "shares": [1.0, 1.0, 1.0]}], "micro_batches": 1}

    def fails_when_agent_1_gets(signum: int) -> str:
        job = stub.SubmitJob(spec(200, f"sig{signum}", everyone), metadata=auth)
        events = stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), metadata=auth,
                               timeout=60)
        for event in events:
            if event.epoch >= 2:  # the cache phase: every agent holds a share of the samples
                mesh.signal("agent-1", signum)
                break
        final = [event for event in events][-1]
        assert final.state == pb.JOB_STATE_FAILED, final
        return final.error

    # Heartbeats every 0.5 s, 3 may be missed: a running job checks its agents as often.
    with LocalMesh(agents=3, run_dir=tmp_path / "mesh", heartbeat_interval_s=0.5) as mesh, \
            grpc.insecure_channel(mesh.coordinator_address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        auth = token_metadata(mesh.join_token)
        # Frozen: its connections stay open, so no call fails; the job's health checks see it
        # (without them the job waited for TCP keepalives, over a minute).
        error = fails_when_agent_1_gets(signal.SIGSTOP)
        assert error.startswith("agent(s) agent-1 (DEADLINE_EXCEEDED"), error
        assert "stopped answering in epoch" in error and "Resubmit" in error
        mesh.signal("agent-1", signal.SIGCONT)
        mesh.wait_for_agents(["agent-0", "agent-1", "agent-2"], timeout_s=20)

        # Killed: the next call to it fails at once, and the reason names it.
        error = fails_when_agent_1_gets(signal.SIGKILL)
        assert error.startswith("agent(s) agent-1 (UNAVAILABLE"), error

        # Submitted at once, while the registry still lists agent-1 as alive.
        again = stub.SubmitJob(spec(2, "again", None), metadata=auth)
        last = list(stub.WatchJob(pb.WatchJobRequest(job_id=again.job_id), metadata=auth,
                                  timeout=120))[-1]
        assert last.state == pb.JOB_STATE_DONE, last.error
        plan = (tmp_path / "again" / "plan.txt").read_text()
        assert "agent-1" not in plan and ("agent-0" in plan or "agent-2" in plan)
