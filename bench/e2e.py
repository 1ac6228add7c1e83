"""The whole job on the local mesh, PAC against the paper's baselines (Table 2's shape).

    python bench/e2e.py [--samples 512] [--epochs 3] [--backbone-dtype bf16] [--no-dropout0]
                        [--pac-runs 3] [--backbone bert-base|bert-large] [--no-earlier-job]
                        [--no-control] [--agent-cpu-quota CORES] [--pac-settings JSON]
                        [--padded-control]

Same model (real all-MiniLM-L6-v2; ``--backbone bert-base`` or ``bert-large``: BERT-base's
or BERT-large's shape with random weights, where the backbone's share of the cost is closer
to the paper's T5-Base and larger models), data (Rotten Tomatoes sentences), batch, seed
and 4 agents on loopback for every approach; each approach gets a fresh mesh so that each
agent's peak memory is its own:
- PAC: epoch 1 on the planner's layout, then redistribution and the cache phase (the run
  of median total time of ``--pac-runs``, min and max printed beside it);
- PAC again on agents that ran a 1-epoch job on the same model just before (untimed): they
  answer the job's profiling from their memo (the coordinator's ``--profile-max-age``), as
  a household's next job on its model does (its peak memory includes the earlier job's;
  ``--no-earlier-job`` skips it);
- EDDL-like pure data parallel (1 stage on all 4 agents) with LoRA and with adapters;
- Eco-FL-like pure pipeline (4 stages, one agent each) with LoRA and with full fine-tuning;
- standalone LoRA on one agent;
- when PAC's plan leaves agents idle (the 4 agents share this machine's cores: the planner
  trains on as many as there are cores, planner/cpu_pools.py), EDDL-like DP with LoRA again
  on PAC's agents and with PAC's micro-batch count (``m=``: the mesh cuts each micro-batch
  to its own longest sentence, so it pads as little as PAC's epoch 1): a control printed
  apart from the paper's layouts, so that what PAC gains from leaving agents idle and from
  the cut is told from what it gains from the method (``--no-control`` skips it).
``--agent-cpu-quota CORES`` caps every agent at that many CPUs of time (a cgroup quota,
pac.cluster.cpu_quota; root only): four agents on a machine of two cores then compute as
four devices of half a core each, as the household the paper measures does, instead of
lending each other the cores they wait on (which hides a pipeline's bubbles).
``--pac-settings '{"all_reduce": "direct"}'`` adds technique settings to PAC's jobs.
``--padded-control`` runs PAC once more with its rows padded (``{"pack_rows": false}``:
epoch 1 as before pac.families.row_packing), printed beside PAC and left out of the ratios
against the baselines.
Baselines run at the model's default dropout (what users run) and again at dropout 0 (a
copy of the model whose config.json says 0; ``--no-dropout0`` skips those), as
../shared/BENCHMARKS.md asks; PAC's backbone runs in eval mode either way and its side
network has no dropout. The issue's targets are stated against the default-dropout
baselines; the ratio against dropout 0 is printed beside them. ``--backbone-dtype bf16``
holds every frozen backbone in bfloat16 (PAC's, and LoRA's and the adapters' base; full
fine-tuning trains the weights, so it stays float32): like for like. Prints total time,
per-epoch time, each agent's memory (idle before the job, peak, and the job's peak above
idle) and the ratios
against PAC; PAC's cache-phase memory is its agents' peak since the backbone's release, as
a raw ratio (the issue's target) and above idle; then PAC's time by phase and where a
cached step's time goes.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import add_keep_flag, machine_line, submit_and_watch, work_dir
from pac.cluster.local_mesh import scrape_metrics

BATCH = 32
AGENTS = ["agent-0", "agent-1", "agent-2", "agent-3"]


def layout(stages: list[tuple[int, int, list[str]]], micro: int) -> dict[str, Any]:
    return {
        "stages": [
            {"begin": b, "end": e, "devices": d, "shares": [1.0] * len(d)} for b, e, d in stages
        ],
        "micro_batches": micro,
    }


def approaches(layers: int) -> dict[str, tuple[str, dict[str, Any] | None]]:
    """Each approach's technique and fixed layout (None: the planner's) for a backbone of
    ``layers`` blocks; the pipeline's cuts are MiniLM's (2, 3, 4 of 6) scaled to ``layers``."""
    cuts = [0, *(round(c * layers / 6) for c in (2, 3, 4)), layers]
    pipeline = layout([(cuts[i], cuts[i + 1], AGENTS[i : i + 1]) for i in range(4)], 4)
    return {
        "PAC (parallel adapters)": ("parallel-adapters", None),
        "EDDL-like DP, LoRA": ("lora", layout([(0, layers, AGENTS)], 1)),
        "EDDL-like DP, adapters": ("adapters", layout([(0, layers, AGENTS)], 1)),
        "Eco-FL-like pipeline, LoRA": ("lora", pipeline),
        "Eco-FL-like pipeline, full": ("full", pipeline),
        "standalone LoRA": ("lora", layout([(0, layers, AGENTS[:1])], 1)),
    }


# BERT shapes with random weights: BERT-base (110M parameters; the paper's smallest
# backbone, T5-Base, has 220M) and BERT-large (335M; between BART-Large's 400M and
# T5-Large's 770M, the paper's larger backbones).
BERT_SHAPES = {
    "bert-base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
    },
    "bert-large": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "intermediate_size": 4096,
        "num_attention_heads": 16,
    },
}


def bert_shaped(minilm: Path, into: Path, shape: str, seed: int = 0) -> Path:
    """A BERT of ``shape`` (a key of :data:`BERT_SHAPES`) with random weights (seed
    ``seed``) and MiniLM's tokenizer, saved into ``into`` and loaded by the jobs through the
    same from_pretrained path as MiniLM: a step's time and memory depend on the shape, not on
    the weights' values (its accuracy means nothing and is not reported as a result)."""
    import torch
    from transformers import BertConfig, BertModel

    from pac.cache.key import TOKENIZER_FILES

    config = json.loads((minilm / "config.json").read_text())
    config.update(BERT_SHAPES[shape])
    into.mkdir(parents=True)
    torch.manual_seed(seed)
    model = BertModel(BertConfig(**{k: v for k, v in config.items() if k != "_name_or_path"}))
    model.save_pretrained(into, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (minilm / name).exists():
            (into / name).symlink_to((minilm / name).resolve())
    return into


MiB = 2**20
PAC = "PAC (parallel adapters)"
# PAC on agents that ran a job on the same model before: they answer the profiling from
# their memo (agent/profile_memo.py) instead of running the model again.
PAC_EARLIER = "PAC, the agents' second job"
PAC_PADDED = "PAC, rows padded (control)"
DROPOUT0 = " (dropout 0)"
CONTROL_OF = "EDDL-like DP, LoRA"
CONTROL = f"{CONTROL_OF} on PAC's"


def without_dropout(model_dir: Path, into: Path) -> Path:
    """A copy of ``model_dir`` whose config.json sets every dropout probability to 0 (the
    other files are symbolic links to the original's)."""
    into.mkdir(parents=True)
    for item in model_dir.iterdir():
        if item.name != "config.json":
            (into / item.name).symlink_to(item.resolve())
    config = json.loads((model_dir / "config.json").read_text())
    for key, value in config.items():
        if "dropout" in key and isinstance(value, float):
            config[key] = 0.0
    (into / "config.json").write_text(json.dumps(config, indent=2))
    return into


def agent_memory(mesh: Any, agent: str) -> dict[str, float]:
    """An agent's memory figures in MB, from its /metrics (agent/peak_memory.py): ``idle``
    (RSS when it registered, before any job), ``peak`` (since the process started),
    ``cache_peak`` (since the backbone's release; 0 without a cache phase), ``now``."""
    samples = scrape_metrics(mesh.services[agent].ports["metrics"])
    return {
        "idle": samples.get("pac_agent_idle_rss_bytes", 0.0) / MiB
        or samples["pac_agent_rss_bytes"] / MiB,
        "peak": samples['pac_agent_peak_rss_bytes{since="start"}'] / MiB,
        "cache_peak": samples['pac_agent_peak_rss_bytes{since="cache_phase"}'] / MiB,
        "now": samples["pac_agent_rss_bytes"] / MiB,
    }


def step_parts(mesh: Any, agents: list[str]) -> dict[str, float]:
    """Mean ms per cache-phase step of each part (pac_agent_cache_step_seconds), averaged
    over the agents."""
    sums: dict[str, list[float]] = {}
    for agent in agents:
        samples = scrape_metrics(mesh.services[agent].ports["metrics"])
        for name, value in samples.items():
            if name.startswith("pac_agent_cache_step_seconds_sum{"):
                part = name.split('part="', 1)[1].split('"', 1)[0]
                count = samples[name.replace("_sum{", "_count{")]
                sums.setdefault(part, []).append(1000 * value / max(count, 1.0))
    return {part: sum(ms) / len(ms) for part, ms in sums.items()}


def run(
    name: str,
    technique: str,
    fixed: dict[str, Any] | None,
    model: Path,
    data: Path,
    epochs: int,
    work: Path,
    backbone_dtype: str,
    earlier_job: bool = False,
    chunk_bytes: int = 0,
    cpu_quota: float = 0.0,
    pac_settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from coordinator.jobs import JobSpec
    from pac.cluster.local_mesh import LocalMesh

    settings: dict[str, Any] = {"layout": fixed} if fixed else {}
    if technique != "full":
        settings["backbone_dtype"] = backbone_dtype
    if technique == "parallel-adapters" and chunk_bytes:
        settings["cache_chunk_bytes"] = chunk_bytes
    if technique == "parallel-adapters":
        settings.update(pac_settings or {})
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
    with LocalMesh(agents=len(AGENTS), run_dir=work / "mesh", agent_cpu_quota=cpu_quota) as mesh:
        used = fixed["stages"] if fixed else None
        devices = sorted({d for s in used for d in s["devices"]}) if used else AGENTS
        idle = {a: agent_memory(mesh, a)["idle"] for a in devices}  # registered, no job yet
        if earlier_job:  # one epoch of the same job first: the agents keep their profiles
            earlier = replace(spec, epochs=1, output_dir=str(work / "earlier"))
            submit_and_watch(mesh, earlier)
        started = time.perf_counter()
        submit_and_watch(mesh, spec)
        seconds = time.perf_counter() - started
        memory = {a: agent_memory(mesh, a) for a in devices}
        parts = step_parts(mesh, devices)
    records = [json.loads(line) for line in (work / "out" / "metrics.jsonl").open()]
    return {
        "total": seconds,
        "epochs": [r["seconds"] for r in records],
        "records": records,
        "idle": max(idle.values()),
        "peak": max(m["peak"] for m in memory.values()),
        # The job's memory above each agent's own idle floor (imports, the interpreter).
        "above": max(memory[a]["peak"] - idle[a] for a in devices),
        "cache_peak": max(m["cache_peak"] for m in memory.values()),
        "cache_above": max(memory[a]["cache_peak"] - idle[a] for a in devices),
        "end": max(m["now"] for m in memory.values()),
        "parts": parts,
        "micro_batches": fixed["micro_batches"] if fixed else planned_micro_batches(work / "out"),
        # The agents that reached the cache phase: those of PAC's plan.
        "trained_on": [a for a in devices if memory[a]["cache_peak"] > 0],
    }


def planned_micro_batches(out: Path) -> int:
    """The micro-batch count of the plan in ``out/plan.txt`` ("batch 32 = 8 micro-batch(es)
    of 4")."""
    found = re.search(r"= (\d+) micro-batch", (out / "plan.txt").read_text())
    if found is None:
        raise ValueError(f"{out / 'plan.txt'} names no micro-batch count")
    return int(found.group(1))


def phase_lines(row: dict[str, Any]) -> list[str]:
    """PAC's time by phase, from its metrics.jsonl (coordinator/drivers/mesh.py)."""
    records = row["records"]
    first = records[0]
    phases = [
        ("profiling the agents' blocks", first.get("profile_seconds", 0.0)),
        ("probing the links", first.get("probe_links_seconds", 0.0)),
        ("planning", first.get("plan_seconds", 0.0)),
        # It loads while the agents are measured: only what was left after planning counts.
        (
            "model + data on the coordinator, left to wait",
            first.get("load_data_wait_seconds", first.get("load_data_seconds", 0.0)),
        ),
        ("model on the agents (OpenJob)", first.get("open_job_seconds", 0.0)),
        ("epoch 1 (pipeline, backbone)", first["seconds"]),
        ("redistribution", first.get("redistribute_seconds", 0.0)),
        ("gather + backbone release", first.get("release_seconds", 0.0)),
    ]
    phases += [(f"epoch {int(r['epoch'])} (cache)", r["seconds"]) for r in records[1:]]
    phases.append(
        ("evaluation + export, all epochs", sum(r.get("evaluate_seconds", 0.0) for r in records))
    )
    other = row["total"] - sum(seconds for _, seconds in phases)
    phases.append(("other (submit, scheduling, saving, closing)", other))
    lines = [f"  {label:<46}{seconds:>7.2f} s" for label, seconds in phases]
    if "load_data_wait_seconds" in first:
        lines.insert(
            4,
            f"  {'(model + data load, beside the profiling)':<46}"
            f"{first['load_data_seconds']:>7.2f} s",
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backbone-dtype", default="float32", choices=("float32", "bf16"))
    parser.add_argument(
        "--backbone",
        default="minilm",
        choices=("minilm", *BERT_SHAPES),
        help="minilm: the real all-MiniLM-L6-v2 (22M parameters); bert-base, bert-large: "
        "BERT-base's (110M) or BERT-large's (335M) shape with random weights and MiniLM's "
        "tokenizer, for time and memory only",
    )
    parser.add_argument(
        "--only", nargs="*", default=None, help="run only these approaches (names as printed)"
    )
    parser.add_argument(
        "--no-dropout0", action="store_true", help="skip the baselines' runs at dropout 0"
    )
    parser.add_argument(
        "--no-earlier-job",
        action="store_true",
        help=f"skip the row {PAC_EARLIER!r} (PAC after a 1-epoch job on the same agents)",
    )
    parser.add_argument(
        "--no-control",
        action="store_true",
        help=f"skip {CONTROL_OF!r} on the agents PAC's plan trained on, run when the "
        "planner left agents idle",
    )
    parser.add_argument(
        "--pac-runs", type=int, default=3, help="PAC's fresh runs; the median one is reported"
    )
    parser.add_argument(
        "--cache-chunk-mib",
        type=float,
        default=0.0,
        help="PAC's cache_chunk_bytes in MiB: the cached hidden states an agent computes at "
        "once in the cache phase, as read (fp16 by default; 0: the job's default, 3 MiB)",
    )
    parser.add_argument(
        "--agent-cpu-quota",
        type=float,
        default=0.0,
        metavar="CORES",
        help="cap every agent at this many CPUs of time (a cgroup quota: each agent computes "
        "as a device of that many cores); 0: the agents share the machine's cores",
    )
    parser.add_argument(
        "--pac-settings",
        type=json.loads,
        default={},
        metavar="JSON",
        help='technique settings added to PAC\'s jobs, e.g. \'{"all_reduce": "direct"}\'',
    )
    parser.add_argument(
        "--padded-control",
        action="store_true",
        help=f"also run {PAC_PADDED!r}: PAC with its rows padded, not packed",
    )
    add_keep_flag(parser)
    args = parser.parse_args()
    from coordinator.commands.demo import minilm_dir
    from pac.data.rotten_tomatoes import write_rotten_tomatoes

    work = work_dir("pac-bench-e2e-", args.keep)
    data = write_rotten_tomatoes(work / "data", train=args.samples, dev=1, test=1)["train"]
    model = minilm_dir()
    label = "MiniLM (real weights)"
    if args.backbone in BERT_SHAPES:
        model = bert_shaped(model, work / f"{args.backbone}-shaped", args.backbone)
        label = f"{args.backbone.upper()} shape (random weights; accuracy not meaningful)"
    layers = json.loads((model / "config.json").read_text())["num_hidden_layers"]
    capped = (
        f", each capped at {args.agent_cpu_quota:g} CPUs (cgroup quota)"
        if args.agent_cpu_quota
        else ", sharing the machine's cores"
    )
    print(
        f"# bench/e2e.py: {label}, {args.samples} sentences, {args.epochs} epochs, batch "
        f"{BATCH}, 4 agents on loopback (1 torch thread each{capped}), frozen backbones in "
        f"{args.backbone_dtype}; {machine_line(1)}"
    )
    quiet = without_dropout(model, work / "model-dropout0")
    runs: list[tuple[str, str, dict[str, Any] | None, Path]] = []
    for name, (technique, fixed) in approaches(layers).items():
        if args.only and name not in args.only:
            continue
        runs.append((name, technique, fixed, model))
        if name == PAC and not args.no_earlier_job:
            runs.append((PAC_EARLIER, technique, fixed, model))
        if name == PAC and args.padded_control:
            runs.append((PAC_PADDED, technique, fixed, model))
        if name != PAC and not args.no_dropout0:
            runs.append((name + DROPOUT0, technique, fixed, quiet))
    rows = {}
    for i, (name, technique, fixed, model_dir) in enumerate(runs):
        # PAC's job is short and the machine noisy: the median of --pac-runs fresh runs.
        is_pac, padded = name in (PAC, PAC_EARLIER, PAC_PADDED), name == PAC_PADDED
        repeats = [
            run(
                name,
                technique,
                fixed,
                model_dir,
                data,
                args.epochs,
                work / f"run{i}-{r}",
                args.backbone_dtype,
                earlier_job=name == PAC_EARLIER,
                chunk_bytes=int(args.cache_chunk_mib * MiB),
                cpu_quota=args.agent_cpu_quota,
                pac_settings={**args.pac_settings, **({"pack_rows": False} if padded else {})},
            )
            for r in range(args.pac_runs if is_pac else 1)
        ]
        totals = sorted(row["total"] for row in repeats)
        rows[name] = min(repeats, key=lambda row: abs(row["total"] - statistics.median(totals)))
        spread = f" (min {totals[0]:.1f}, max {totals[-1]:.1f})" if len(totals) > 1 else ""
        print(f"# done: {name} in {rows[name]['total']:.1f} s{spread}", flush=True)
    controls = {}
    planned_on = rows[PAC]["trained_on"] if PAC in rows else AGENTS
    if 0 < len(planned_on) < len(AGENTS) and not args.no_control:
        # The planner left agents idle (they share CPU cores): the best baseline's layout
        # on the same agents, so that PAC's gain from the method is told from that choice;
        # with PAC's micro-batch count, so that it computes as little padding as PAC's
        # epoch 1 (the mesh cuts every micro-batch to its own longest sentence).
        micro = rows[PAC]["micro_batches"]
        name = f"{CONTROL} {len(planned_on)} agents, m={micro}"
        technique, _ = approaches(layers)[CONTROL_OF]
        fixed = layout([(0, layers, planned_on)], micro)
        controls[name] = run(
            name,
            technique,
            fixed,
            model,
            data,
            args.epochs,
            work / "control",
            args.backbone_dtype,
            cpu_quota=args.agent_cpu_quota,
        )
        print(f"# done: {name} in {controls[name]['total']:.1f} s", flush=True)
    print(
        "memory per agent, MB (the largest over the approach's agents): idle = RSS when "
        "registered, before the job (imports, interpreter); peak = VmHWM since the start; "
        "above idle = peak - idle"
    )
    print(
        f"{'approach':<42}{'total s':>9}{'epochs s':>24}{'idle':>7}{'peak':>7}"
        f"{'above idle':>12}{'end':>6}{'time vs PAC':>13}"
    )
    pac = rows.get(PAC)
    for name, row in {**rows, **controls}.items():
        epochs = "/".join(f"{s:.1f}" for s in row["epochs"][:3])
        if len(row["epochs"]) > 3:
            epochs += f"/...({len(row['epochs'])})"
        ratio = f"{row['total'] / pac['total']:>12.1f}x" if pac else f"{'-':>13}"
        print(
            f"{name:<42}{row['total']:>9.1f}{epochs:>24}{row['idle']:>7.0f}{row['peak']:>7.0f}"
            f"{row['above']:>12.0f}{row['end']:>6.0f}{ratio}"
        )
    if pac is not None:
        print("PAC's time by phase (from its metrics.jsonl):")
        print("\n".join(phase_lines(pac)))
        if pac["parts"]:
            parts = ", ".join(f"{part} {ms:.1f}" for part, ms in sorted(pac["parts"].items()))
            print(f"PAC's cache-phase step, mean ms per part over the agents: {parts}")
        if pac["cache_peak"] > 0:
            print(
                f"PAC's cache-phase peak memory per agent (VmHWM since the backbone's "
                f"release): {pac['cache_peak']:.0f} MB, {pac['cache_above']:.0f} MB above idle"
            )
    baselines = {n: r for n, r in rows.items() if n not in (PAC, PAC_EARLIER, PAC_PADDED)}
    if pac is None or not baselines:
        return 0
    lowest = min(baselines, key=lambda n: baselines[n]["peak"])
    lowest_above = min(baselines, key=lambda n: baselines[n]["above"])
    speedups = []
    for label, group in (
        ("default dropout", {n: r for n, r in baselines.items() if not n.endswith(DROPOUT0)}),
        ("dropout 0", {n: r for n, r in baselines.items() if n.endswith(DROPOUT0)}),
    ):
        if group:
            best = min(group, key=lambda n: group[n]["total"])
            ratio = group[best]["total"] / pac["total"]
            speedups.append(f"{ratio:.1f}x ({label}: {best.removesuffix(DROPOUT0)})")
    print(
        f"PAC vs the best baseline over {args.epochs} epochs: {', '.join(speedups)} "
        "(target, default dropout: >= 5x over 3 epochs, >= 8x over 10)"
    )
    for name, row in controls.items():
        print(
            f"PAC vs {name} (a control, not one of the paper's layouts): "
            f"{row['total'] / pac['total']:.1f}x; the agents' second job "
            + (
                f"{row['total'] / rows[PAC_EARLIER]['total']:.1f}x"
                if PAC_EARLIER in rows
                else "not run"
            )
        )
    warm = rows.get(PAC_EARLIER)
    default = {n: r for n, r in baselines.items() if not n.endswith(DROPOUT0)}
    if warm is not None and default:
        best = min(default, key=lambda n: default[n]["total"])
        print(
            f"{PAC_EARLIER} vs the best baseline over {args.epochs} epochs: "
            f"{default[best]['total'] / warm['total']:.1f}x (default dropout: {best}); "
            f"its profiling took {warm['records'][0].get('profile_seconds', 0.0):.2f} s, "
            f"PAC's {pac['records'][0].get('profile_seconds', 0.0):.2f} s"
        )
    if pac["cache_peak"] > 0:
        print(
            f"PAC's cache-phase peak against the baselines [the issue's target: <= 20%]: "
            f"raw {pac['cache_peak']:.0f} MB = "
            f"{100 * pac['cache_peak'] / baselines[lowest]['peak']:.0f}% of the lowest "
            f"baseline peak ({lowest}, {baselines[lowest]['peak']:.0f} MB)"
        )
        print(
            f"  above the idle agent: {pac['cache_above']:.0f} MB = "
            f"{100 * pac['cache_above'] / baselines[lowest_above]['above']:.0f}% of the lowest "
            f"baseline's above idle ({lowest_above}, {baselines[lowest_above]['above']:.0f} MB)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
