"""The whole job on the local mesh, PAC against the paper's baselines (Table 2's shape).

    python bench/e2e.py [--samples 512] [--epochs 3] [--backbone-dtype bf16]

Same model (real all-MiniLM-L6-v2), data (Rotten Tomatoes sentences), batch, seed and 4
agents on loopback for every approach; each approach gets a fresh mesh so that each agent's
peak memory (VmHWM) is its own:
- PAC: epoch 1 on the planner's layout, then redistribution and the cache phase;
- EDDL-like pure data parallel (1 stage on all 4 agents) with LoRA and with adapters;
- Eco-FL-like pure pipeline (4 stages, one agent each) with LoRA and with full fine-tuning;
- standalone LoRA on one agent.
Baselines run at the model's default dropout. ``--backbone-dtype bf16`` holds every frozen
backbone in bfloat16 (PAC's, and LoRA's and the adapters' base; full fine-tuning trains the
weights, so it stays float32): like for like. Prints total time, per-epoch time, peak
memory per agent, and the ratios against PAC; PAC's cache-phase memory is the agents' RSS
at the end of the job.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine_line, submit_and_watch
from bench.mesh_epoch1 import metric_sum

BATCH = 32
AGENTS = ["agent-0", "agent-1", "agent-2", "agent-3"]


def layout(stages: list[tuple[int, int, list[str]]], micro: int) -> dict[str, Any]:
    return {
        "stages": [
            {"begin": b, "end": e, "devices": d, "shares": [1.0] * len(d)} for b, e, d in stages
        ],
        "micro_batches": micro,
    }


APPROACHES: dict[str, tuple[str, dict[str, Any] | None]] = {
    "PAC (parallel adapters)": ("parallel-adapters", None),
    "EDDL-like DP, LoRA": ("lora", layout([(0, 6, AGENTS)], 1)),
    "EDDL-like DP, adapters": ("adapters", layout([(0, 6, AGENTS)], 1)),
    "Eco-FL-like pipeline, LoRA": (
        "lora",
        layout(
            [(0, 2, AGENTS[:1]), (2, 3, AGENTS[1:2]), (3, 4, AGENTS[2:3]), (4, 6, AGENTS[3:])], 4
        ),
    ),
    "Eco-FL-like pipeline, full": (
        "full",
        layout(
            [(0, 2, AGENTS[:1]), (2, 3, AGENTS[1:2]), (3, 4, AGENTS[2:3]), (4, 6, AGENTS[3:])], 4
        ),
    ),
    "standalone LoRA": ("lora", layout([(0, 6, AGENTS[:1])], 1)),
}


def run(
    name: str,
    technique: str,
    fixed: dict[str, Any] | None,
    model: Path,
    data: Path,
    epochs: int,
    work: Path,
    backbone_dtype: str,
) -> dict[str, Any]:
    from coordinator.commands.demo import peak_rss_mb
    from coordinator.jobs import JobSpec
    from pac.cluster.local_mesh import LocalMesh

    settings: dict[str, Any] = {"layout": fixed} if fixed else {}
    if technique != "full":
        settings["backbone_dtype"] = backbone_dtype
    spec = JobSpec(
        model_dir=str(model),
        data_path=str(data),
        task="classification",
        technique=technique,
        technique_settings=settings,
        epochs=epochs,
        batch_size=BATCH,
        micro_batches=1,  # PAC: the planner chooses; the baselines' layouts fix their own
        max_length=64,
        placement="mesh",
        output_dir=str(work / "out"),
    )
    with LocalMesh(agents=len(AGENTS), run_dir=work / "mesh") as mesh:
        started = time.perf_counter()
        submit_and_watch(mesh, spec)
        seconds = time.perf_counter() - started
        used = fixed["stages"] if fixed else None
        devices = sorted({d for s in used for d in s["devices"]}) if used else AGENTS
        peaks = {a: peak_rss_mb(mesh.services[a].pid) for a in devices}
        ends = {}
        for agent in devices:
            port = mesh.services[agent].ports["metrics"]
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
            ends[agent] = metric_sum(text, "pac_agent_rss_bytes") / 2**20
    records = [json.loads(line) for line in (work / "out" / "metrics.jsonl").open()]
    return {
        "total": seconds,
        "epochs": [r["seconds"] for r in records],
        "peak": max(peaks.values()),
        "end": max(ends.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backbone-dtype", default="float32", choices=("float32", "bf16"))
    args = parser.parse_args()
    from coordinator.commands.demo import minilm_dir
    from pac.data.rotten_tomatoes import write_rotten_tomatoes

    work = Path(tempfile.mkdtemp(prefix="pac-bench-e2e-"))
    data = write_rotten_tomatoes(work / "data", train=args.samples, dev=1, test=1)["train"]
    model = minilm_dir()
    print(
        f"# bench/e2e.py: MiniLM, {args.samples} sentences, {args.epochs} epochs, batch "
        f"{BATCH}, 4 agents on loopback (1 torch thread each), frozen backbones in "
        f"{args.backbone_dtype}; {machine_line(1)}"
    )
    rows = {}
    for i, (name, (technique, fixed)) in enumerate(APPROACHES.items()):
        rows[name] = run(
            name, technique, fixed, model, data, args.epochs, work / f"run{i}", args.backbone_dtype
        )
        print(f"# done: {name} in {rows[name]['total']:.0f} s", flush=True)
    pac = rows["PAC (parallel adapters)"]
    print(
        f"{'approach':<30}{'total s':>9}{'epochs s':>24}{'peak MB/agent':>15}"
        f"{'end MB':>8}{'vs PAC':>8}"
    )
    for name, row in rows.items():
        epochs = "/".join(f"{s:.1f}" for s in row["epochs"][:3])
        if len(row["epochs"]) > 3:
            epochs += f"/...({len(row['epochs'])})"
        print(
            f"{name:<30}{row['total']:>9.1f}{epochs:>24}{row['peak']:>15.0f}"
            f"{row['end']:>8.0f}{row['total'] / pac['total']:>7.1f}x"
        )
    baselines = {n: r for n, r in rows.items() if n != "PAC (parallel adapters)"}
    best = min(baselines, key=lambda n: baselines[n]["total"])
    lowest = min(baselines, key=lambda n: baselines[n]["peak"])
    print(
        f"PAC vs the best baseline ({best}) over {args.epochs} epochs: "
        f"{baselines[best]['total'] / pac['total']:.1f}x; PAC's cache-phase memory per agent "
        f"{pac['end']:.0f} MB = {100 * pac['end'] / baselines[lowest]['peak']:.0f}% of the "
        f"lowest baseline peak ({lowest})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
