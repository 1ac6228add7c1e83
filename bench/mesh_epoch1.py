"""Epoch 1 of PAC on the local mesh (2 and 4 agents) against the same work on one device,
with the pipeline's bubble and bytes per step, and the planner's prediction beside each.

    python bench/mesh_epoch1.py [--samples 512] [--agents 2 4]

Real all-MiniLM-L6-v2 on Rotten Tomatoes sentences. One device: `pac train` (standalone,
all cores). The mesh: agents on loopback (each with cores // (agents + 1) threads), the
planner service's layout for their measured blocks and links, the same data, batch and
seed. The bubble is
the share of a step an agent spent waiting for its neighbours (pac_agent_stage_wait_seconds
against pac_agent_stage_compute_seconds, from each agent's /metrics). The prediction is
the planner's, made from the agents' own Profile of the job's blocks at two micro-batch
sizes (all agents profiling at once, as they will train) and their probed links.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_keep_flag, machine_line, submit_and_watch, work_dir

BATCH, MICRO = 32, 4


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of ``name`` in a Prometheus exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def one_device(model: Path, data: Path, out: Path) -> float:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pac.cli",
            "train",
            "--model",
            str(model),
            "--data",
            str(data),
            "--task",
            "classification",
            "--epochs",
            "1",
            "--batch-size",
            str(BATCH),
            "--max-length",
            "64",
            "--out",
            str(out),
            "--quiet",
        ],
        check=True,
        capture_output=True,
    )
    return float(json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["seconds"])


def on_mesh(agents: int, model: Path, data: Path, work: Path) -> dict[str, Any]:
    from coordinator.jobs import JobSpec
    from pac.cluster.local_mesh import LocalMesh
    from pac.pipeline.layout import PipelineLayout

    spec = JobSpec(
        model_dir=str(model),
        data_path=str(data),
        task="classification",
        technique="parallel-adapters",
        epochs=1,
        batch_size=BATCH,
        micro_batches=MICRO,
        max_length=64,
        learning_rate=1e-3,
        placement="mesh",
        output_dir=str(work / "out"),
    )
    with LocalMesh(agents=agents, run_dir=work / "mesh") as mesh:
        final = submit_and_watch(mesh, spec)
        wait = compute = sent = 0.0
        for name in mesh.agent_names():
            port = mesh.services[name].ports["metrics"]
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            wait += metric_sum(text, "pac_agent_stage_wait_seconds_sum")
            compute += metric_sum(text, "pac_agent_stage_compute_seconds_sum")
            sent += metric_sum(text, "pac_agent_sent_bytes_total")
    record = json.loads((work / "out" / "metrics.jsonl").read_text().splitlines()[0])
    steps = final.step
    log = (work / "mesh" / "logs" / "coordinator.log").read_text()
    layout = PipelineLayout.from_json(log.split(" layout: ", 1)[1].splitlines()[0])
    stages = " | ".join(f"[{s.begin},{s.end})x{len(s.devices)}" for s in layout.stages)
    return {
        "seconds": float(record["seconds"]),
        "predicted": float(record["predicted_seconds"]),
        "bubble": wait / max(wait + compute, 1e-9),
        "bytes_per_step": sent / max(steps, 1),
        "layout": stages,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--agents", type=int, nargs="+", default=[2, 4])
    add_keep_flag(parser)
    args = parser.parse_args()
    from coordinator.commands.demo import minilm_dir
    from pac.data.rotten_tomatoes import write_rotten_tomatoes

    work = work_dir("pac-bench-mesh-", args.keep)
    data = write_rotten_tomatoes(work / "data", train=args.samples, dev=1, test=1)["train"]
    model = minilm_dir()
    print(
        f"# bench/mesh_epoch1.py: MiniLM, {args.samples} Rotten Tomatoes sentences, batch "
        f"{BATCH}, {MICRO} micro-batches; {machine_line(2)}"
    )
    started = time.perf_counter()
    single = one_device(model, data, work / "single")
    print(
        f"{'setting':<12}{'layout':<28}{'epoch 1 s':>10}{'predicted s':>12}{'error':>8}"
        f"{'vs 1 device':>12}{'bubble':>8}{'MB/step':>9}"
    )
    print(f"{'1 device':<12}{'all blocks':<28}{single:>10.1f}{'':>20}{1.0:>11.2f}x")
    for agents in args.agents:
        row = on_mesh(agents, model, data, work / f"mesh{agents}")
        print(
            f"{f'{agents} agents':<12}{row['layout']:<28}{row['seconds']:>10.1f}"
            f"{row['predicted']:>12.1f}"
            f"{100 * (row['predicted'] - row['seconds']) / row['seconds']:>+7.0f}%"
            f"{single / row['seconds']:>11.2f}x"
            f"{100 * row['bubble']:>7.0f}%{row['bytes_per_step'] / 2**20:>9.2f}"
        )
    print(f"# {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
