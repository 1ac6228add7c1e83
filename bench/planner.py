"""Planner benchmark: planning time, classes vs brute force, PAC vs the baselines, and
what a fixed cost per micro-batch changes.

    python bench/planner.py            # everything (about 20 s on 2 idle cores)
    python bench/planner.py --quick    # skip 16 devices x 96 layers with 4 types

Planning times are wall-clock on this machine (median of the runs shown) beside the
process's CPU seconds: on a shared machine the CPU column shows the planner's own work.
Step times are the cost model's predictions for one cluster, so their ratios compare
plans, not hardware.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

# Run as `python bench/planner.py`, this file would shadow the planner package: look in the
# repository root first, not in bench/.
ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]

import planner  # noqa: E402
from planner import Plan, PlanInfeasible, Technique  # noqa: E402
from planner.api import micro_batch_counts  # noqa: E402
from planner.brute import brute_force  # noqa: E402
from planner.costs import CostModel, Layout, evaluate  # noqa: E402
from planner.estimate import cluster_from_json, model_profile, model_shape  # noqa: E402
from planner.profiles import Cluster, ModelProfile  # noqa: E402
from planner.synthetic import random_cluster, synthetic_model  # noqa: E402

T5_LARGE = {
    "model_type": "t5",
    "d_model": 1024,
    "d_ff": 4096,
    "num_layers": 24,
    "num_decoder_layers": 24,
    "num_heads": 16,
    "vocab_size": 32128,
}
HOUSEHOLD: dict[str, Any] = {
    "devices": [
        {"name": "laptop", "gflops": 120, "memory_gb": 6},
        {"name": "mini-pc", "gflops": 80, "memory_gb": 4},
        {"name": "jetson", "gflops": 25, "memory_gb": 2, "count": 4},
        {"name": "phone", "gflops": 15, "memory_gb": 1.0, "count": 2},
    ],
    "links": {"default": {"bandwidth_mbps": 500, "latency_ms": 1}},
}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(
    cluster: Cluster, model: ModelProfile, runs: int, **kw: object
) -> tuple[list[float], list[float], planner.Plan]:
    """Wall and CPU seconds of each run (CPU shows the work when the machine is shared)."""
    walls, cpus = [], []
    result = None
    for _ in range(runs):
        start, cpu = time.perf_counter(), time.process_time()
        result = planner.plan(cluster, model, **kw)  # type: ignore[arg-type]
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    assert result is not None
    return walls, cpus, result


def planning_time(quick: bool) -> None:
    print("\n## planning time (parallel-adapters, batch 32; M: the planner's choice among the")
    print("## divisors of 32, or fixed, which makes groups of up to 32/M devices worth searching;")
    print("## mb ms: every device's fixed cost per micro-batch, which makes small M pay)")
    print(
        f"{'devices x layers':>17} {'types':>6} {'M':>5} {'mb ms':>5} {'runs':>5} "
        f"{'median s':>9} "
        f"{'min s':>7} {'max s':>7} {'cpu s':>7} {'target':>7}  plan"
    )
    # (devices, layers, types, M or None = free, runs, fixed ms per micro-batch)
    cases: list[tuple[int, int, int, int | None, int, float]] = [
        (8, 48, 2, None, 3, 0.0),
        (8, 48, 3, None, 3, 0.0),
        (8, 48, 4, None, 3, 0.0),
        (8, 48, 4, 4, 3, 0.0),
        (8, 48, 4, None, 3, 3.0),
        (16, 96, 2, None, 1, 0.0),
        (16, 96, 3, None, 1, 0.0),
        (16, 96, 3, 4, 1, 0.0),
    ]
    if not quick:
        cases += [(16, 96, 4, None, 1, 0.0), (16, 96, 4, 4, 1, 0.0), (16, 96, 4, None, 1, 3.0),
                  (16, 96, 4, 4, 1, 3.0)]
    for n, layers, kinds, m, runs, overhead_ms in cases:
        rng = np.random.default_rng(7)
        model = synthetic_model(layers)
        cluster = random_cluster(
            rng, n, model, num_types=kinds, memory_mib=(600, 2000), bandwidth_mbps=(1000, 1000)
        )
        cluster = Cluster(
            tuple(replace(d, micro_batch_overhead_s=overhead_ms / 1e3) for d in cluster.devices),
            cluster.network,
        )
        times, cpus, result = timed(
            cluster, model, runs, technique="parallel-adapters", global_batch=32, micro_batches=m
        )
        target = 1.0 if n == 8 else 10.0
        shape = (
            f"{len(result.stages)} stages, groups "
            f"{'/'.join(str(len(g)) for g in result.groups)}, M={result.micro_batches}"
        )
        label = "free" if m is None else str(m)
        print(
            f"{n:>7} x {layers:<7} {kinds:>6} {label:>5} {overhead_ms:>5.0f} {runs:>5} "
            f"{statistics.median(times):>9.2f} {min(times):>7.2f} {max(times):>7.2f} "
            f"{statistics.median(cpus):>7.2f} {target:>6.0f}s  {shape}",
            flush=True,
        )


def classes_vs_brute_force() -> None:
    print("\n## many distinct devices, planned through <= 4 classes")
    print(f"{'case':>24} {'plan s':>7} {'classes step ms':>16} {'exact step ms':>14} {'loss':>7}")
    losses = []
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        model = synthetic_model(6, hidden=512, seq=64)
        cluster = random_cluster(rng, 6, model, memory_mib=(40, 200), bandwidth_mbps=(300, 1000))
        start = time.perf_counter()
        try:
            got = planner.plan(cluster, model, "parallel-adapters", 8)
        except PlanInfeasible:
            continue
        took = time.perf_counter() - start
        exact = brute_force(
            CostModel(cluster, model, Technique.PARALLEL_ADAPTERS), 8, micro_batch_counts(8, None)
        )
        assert exact is not None
        loss = got.step_time_s / exact[1] - 1
        losses.append(loss)
        print(
            f"{'6 distinct x 6 layers #' + str(seed):>24} {took:>7.2f} "
            f"{got.step_time_s * 1e3:>16.1f} {exact[1] * 1e3:>14.1f} {loss:>6.1%}"
        )
    rng = np.random.default_rng(9)
    model = synthetic_model(48)
    cluster = random_cluster(rng, 12, model, memory_mib=(600, 2000), bandwidth_mbps=(1000, 1000))
    start = time.perf_counter()
    got = planner.plan(cluster, model, "parallel-adapters", 32)
    print(
        f"{'12 distinct x 48 layers':>24} {time.perf_counter() - start:>7.2f} "
        f"{got.step_time_s * 1e3:>16.1f} {'(too big)':>14} {'':>7}"
    )
    if losses:
        print(f"classes vs exact: mean loss {np.mean(losses):.1%}, worst {max(losses):.1%}")


def strategies() -> float:
    """PAC's plan against the baselines' plans, same cost model, same cluster and model."""
    shape = model_shape(T5_LARGE, "t5-large")
    model = model_profile(shape, 128)
    cluster = cluster_from_json(HOUSEHOLD, shape, 128)
    print(
        f"\n## T5-Large (48 blocks, seq 128), household of {len(cluster.devices)} devices "
        "(laptop, mini-pc, 4 jetsons, 2 phones), 500 Mbit/s, batch 32"
    )
    print(
        f"{'technique':>17} {'M':>5} {'strategy':>14} {'step s':>8} {'vs pac':>7} "
        f"{'stages':>6}  devices per stage"
    )
    headline = 0.0
    for technique, m in (
        ("parallel-adapters", None),
        ("parallel-adapters", 8),
        ("parallel-adapters", 4),
        ("full", None),
    ):
        rows: dict[str, Plan | None] = {}
        for strategy in ("pac", "even-split", "data-parallel", "pipeline", "standalone"):
            try:
                rows[strategy] = planner.plan(
                    cluster, model, technique, 32, micro_batches=m, strategy=strategy
                )
            except PlanInfeasible:
                rows[strategy] = None
        pac = rows["pac"]
        assert pac is not None
        for strategy, result in rows.items():
            label = "free" if m is None else str(m)
            if result is None:
                print(f"{technique:>17} {label:>5} {strategy:>14} {'infeasible':>8}")
                continue
            sizes = "/".join(str(len(g)) for g in result.groups)
            print(
                f"{technique:>17} {label:>5} {strategy:>14} {result.step_time_s:>8.2f} "
                f"{result.step_time_s / pac.step_time_s:>6.2f}x {len(result.stages):>6}  "
                f"{sizes} (M={result.micro_batches})"
            )
        others = [r.step_time_s for s, r in rows.items() if s != "pac" and r is not None]
        ratio = min(others) / pac.step_time_s
        print(f"{'':>17} best baseline / pac: {ratio:.2f}x")
        if technique == "parallel-adapters" and m == 8:
            headline = ratio
    return headline


def overhead_effect() -> float:
    """Plans with a fixed cost per micro-batch against plans that ignore it (same cost)."""
    rng = np.random.default_rng(7)
    model = synthetic_model(48)
    plain = random_cluster(
        rng, 8, model, num_types=3, memory_mib=(600, 2000), bandwidth_mbps=(1000, 1000)
    )
    print("\n## fixed cost per micro-batch (every device): PAC's plan with it, against the plan")
    print("## made without it, both priced with it (8 devices of 3 types x 48 layers, batch 32)")
    print(f"{'overhead ms':>11} {'M':>4} {'stages':>6} {'step s':>8} {'blind M':>8} "
          f"{'blind step s':>12} {'blind / aware':>13}")
    blind = planner.plan(plain, model, "parallel-adapters", 32)
    worst = 1.0
    for overhead_ms in (0.0, 3.0, 10.0, 30.0):
        cluster = Cluster(
            tuple(replace(d, micro_batch_overhead_s=overhead_ms / 1e3) for d in plain.devices),
            plain.network,
        )
        aware = planner.plan(cluster, model, "parallel-adapters", 32)
        costs = CostModel(cluster, model, Technique.PARALLEL_ADAPTERS)
        index = {name: k for k, name in enumerate(costs.names)}
        layout = Layout(
            tuple((tuple(index[d] for d in s.group.devices), s.start, s.end)
                  for s in blind.stages),
            blind.micro_batches,
        )
        blind_step = evaluate(costs, layout, 32).step_time_s
        ratio = blind_step / aware.step_time_s
        worst = max(worst, ratio)
        print(f"{overhead_ms:>11.0f} {aware.micro_batches:>4} {len(aware.stages):>6} "
              f"{aware.step_time_s:>8.3f} {blind.micro_batches:>8} {blind_step:>12.3f} "
              f"{ratio:>12.2f}x")
    return worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(
        f"cpu: {cpu_model()} ({os.cpu_count()} cores), numpy {np.__version__}, "
        f"python {platform.python_version()}"
    )
    planning_time(args.quick)
    classes_vs_brute_force()
    headline = strategies()
    overhead_gain = overhead_effect()
    print(
        f"\npredicted step, best baseline plan / PAC's plan (T5-Large, household, "
        f"parallel-adapters, 8 micro-batches): {headline:.2f}x; planning with the fixed cost "
        f"per micro-batch vs without it: up to {overhead_gain:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
