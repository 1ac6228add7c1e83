"""What losing an agent mid-job costs: the same PAC job on the local mesh without a
failure, with one agent frozen (SIGSTOP) in epoch 1 and in the cache phase, and with it
killed (SIGKILL) in the cache phase; and with the coordinator killed in the cache phase and
started again at once (it resumes the job from the agents' checkpoints).

    python bench/restart.py [--samples 256] [--epochs 3]

Same model (real all-MiniLM-L6-v2), data (Rotten Tomatoes sentences), batch and seed as
bench/e2e.py, 4 agents on loopback, a fresh mesh per run; heartbeats every second, 3 may be
missed (the local mesh's defaults), so a frozen agent is found about 5 s after it froze (3
missed checks and a check's 2 s deadline); a killed one at the next call to it.
Prints per run the total time, when the agent froze and when the job restarted, the
restart's phases (profiling, planning, loading, restoring the kept state and rebuilding
the cache), the final accuracy, and how far the final adapters are from the run without a
failure (the restarted job should end where it ends, up to float rounding: the mesh sums
the gradients of the 3 agents left in another order than those of 4).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_keep_flag, machine_line, submit, watch_job, work_dir

BATCH = 32
# name -> (the epoch in whose progress reports the victim gets the signal, or 0 for none;
# the first step reported that qualifies (0 = the epoch's start event); the signal)
RUNS = {
    "no failure": (0, 0, 0),
    "frozen in epoch 1": (1, 3, signal.SIGSTOP),
    "frozen in epoch 2": (2, 0, signal.SIGSTOP),
    "killed in epoch 2": (2, 0, signal.SIGKILL),
    # The coordinator killed; a new one started at once on the same state.
    "coordinator killed in epoch 2": (2, 2, -signal.SIGKILL),
}
RESTART_PHASES = (
    "profile_seconds",
    "probe_links_seconds",
    "plan_seconds",
    "load_data_wait_seconds",  # the load overlaps the profiling: what was left after it
    "open_job_seconds",
    "restore_seconds",
    "redistribute_seconds",
    "release_seconds",
)


def run(
    model: Path, data: Path, epochs: int, work: Path, freeze_at: tuple[int, int, int]
) -> dict[str, Any]:
    import grpc
    import torch
    from safetensors.torch import load_file

    from coordinator.drivers.mesh_recovery import ATTEMPT_FILE
    from coordinator.drivers.mesh_restart import RESTARTS_FILE
    from coordinator.jobs import JobSpec
    from pac.cluster.local_mesh import LocalMesh
    from pac.engine.export import WEIGHTS_FILE
    from protos.v1 import coordinator_pb2 as pb

    out = work / "out"
    spec = JobSpec(
        model_dir=str(model),
        data_path=str(data),
        eval_path=str(data),
        task="classification",
        technique="parallel-adapters",
        epochs=epochs,
        batch_size=BATCH,
        max_length=64,
        placement="mesh",
        output_dir=str(out),
    )
    marks: dict[str, float] = {}
    victim: list[str] = []
    with LocalMesh(agents=4, run_dir=work / "mesh") as mesh:

        def on_event(event: Any) -> None:
            epoch, step, signum = freeze_at
            now = time.perf_counter()
            training, restart = event.state == pb.JOB_STATE_TRAINING, pb.JOB_STATE_PROFILING
            due = training and event.epoch == epoch and event.step >= step
            if epoch and "froze" not in marks and due:
                if signum > 0:  # the last agent the job trains on (the plan may leave some)
                    victim.append(json.loads((out / ATTEMPT_FILE).read_text())["agents"][-1])
                mesh.signal(victim[0] if signum > 0 else "coordinator", abs(signum))
                marks["froze"] = now
            if "froze" in marks and "restarted" not in marks and event.state == restart:
                marks["restarted"] = now
            if "restarted" in marks and "resumed" not in marks and training and event.step:
                marks["resumed"] = now

        started = time.perf_counter()
        try:
            job_id = submit(mesh, spec)
            try:
                final = watch_job(mesh, job_id, on_event)
            except grpc.RpcError:
                if freeze_at[2] > 0:
                    raise
                mesh.stop("coordinator")  # (reaped: it was killed)
                mesh.start("coordinator")
                final = watch_job(mesh, job_id, on_event)
        finally:
            if victim and freeze_at[2] != signal.SIGKILL:
                mesh.signal(victim[0], signal.SIGKILL)
        total = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    log = out / RESTARTS_FILE
    restarts = log.read_text().splitlines() if log.exists() else []
    resumed = [r for r in records if "restore_seconds" in r] or records[:1]
    return {
        "total": total,
        "accuracy": final.metrics.get("accuracy", float("nan")),
        "restarts": len(restarts),
        "detect": marks["restarted"] - marks["froze"] if "restarted" in marks else 0.0,
        "resume": marks["resumed"] - marks["restarted"] if "resumed" in marks else 0.0,
        "phases": {p: resumed[0].get(p, 0.0) for p in RESTART_PHASES},
        # A restart past epoch 1: the samples the agents that stayed kept, and those rebuilt.
        "samples": (resumed[0].get("cached_samples"), resumed[0].get("rebuilt_samples")),
        "victim": victim[0] if victim else "",
        "weights": {k: v.to(torch.float64) for k, v in load_file(str(out / WEIGHTS_FILE)).items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    add_keep_flag(parser)
    args = parser.parse_args()
    from coordinator.commands.demo import minilm_dir
    from pac.data.rotten_tomatoes import write_rotten_tomatoes

    work = work_dir("pac-bench-restart-", args.keep)
    data = write_rotten_tomatoes(work / "data", train=args.samples, dev=1, test=1)["train"]
    print(
        f"# bench/restart.py: MiniLM, PAC, {args.samples} sentences, {args.epochs} epochs, "
        f"batch {BATCH}, 4 agents on loopback, the last agent the job trains on frozen or "
        f"killed; {machine_line(1)}"
    )
    rows = {}
    for i, (name, freeze_at) in enumerate(RUNS.items()):
        rows[name] = run(minilm_dir(), data, args.epochs, work / f"run{i}", freeze_at)
        print(f"# done: {name} in {rows[name]['total']:.1f} s", flush=True)
    base = rows["no failure"]
    print(
        f"{'run':<32}{'total s':>9}{'vs none':>9}{'restarts':>9}{'detect s':>10}"
        f"{'to training s':>14}{'accuracy':>10}{'max |w - none|':>16}"
    )
    diffs = {}
    for name, row in rows.items():
        diff = max(float((row["weights"][k] - v).abs().max()) for k, v in base["weights"].items())
        diffs[name] = diff
        print(
            f"{name:<32}{row['total']:>9.1f}{row['total'] - base['total']:>+9.1f}"
            f"{row['restarts']:>9}{row['detect']:>10.1f}{row['resume']:>14.1f}"
            f"{row['accuracy']:>10.3f}{diff:>16.2e}"
        )
    for name, row in rows.items():
        if row["restarts"]:
            phases = ", ".join(
                f"{p.removesuffix('_seconds')} {s:.2f}" for p, s in row["phases"].items() if s
            )
            kept, rebuilt = row["samples"]
            if rebuilt is not None:
                phases += f"; cache: {kept:.0f} samples kept, {rebuilt:.0f} rebuilt"
            who = f" ({row['victim']})" if row["victim"] else ""
            print(f"{name}{who}: the restart's phases (s): {phases}")
    worst = max((n for n in rows if n != "no failure"), key=lambda n: rows[n]["total"])
    print(
        f"losing 1 of 4 agents or the coordinator costs at most "
        f"{rows[worst]['total'] / base['total']:.2f}x the job's time ({worst}); every "
        "restarted job ended within "
        f"{max(diffs.values()):.1e} of the uninterrupted one's adapters"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
