"""The library call: ``planner.plan(cluster, model, technique=..., global_batch=...)``."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from planner import baselines
from planner.cache_phase import proportional_shares, side_speeds
from planner.costs import MODEL_NOTES, CostModel, Layout, evaluate
from planner.cpu_pools import pool_uses
from planner.device_types import MAX_TYPES, device_types
from planner.errors import PlanInfeasible, gib
from planner.plan import DeviceGroup, Plan, Stage
from planner.profiles import Cluster, ModelProfile, Technique
from planner.schedule import one_f_one_b
from planner.search import search

STRATEGIES = ("pac", "standalone", "data-parallel", "pipeline", "even-split")


def micro_batch_counts(global_batch: int, micro_batches: int | None) -> list[int]:
    """The micro-batch counts to try: the given one, else every divisor of the batch."""
    if global_batch < 1:
        raise ValueError(f"the global batch must be at least 1, got {global_batch}")
    if micro_batches is None:
        return [m for m in range(1, global_batch + 1) if global_batch % m == 0]
    if micro_batches < 1 or global_batch % micro_batches:
        raise ValueError(
            f"{micro_batches} micro-batches do not split a batch of {global_batch} evenly; "
            "pick a divisor of the batch or leave it to the planner"
        )
    return [micro_batches]


def plan(
    cluster: Cluster,
    model: ModelProfile,
    technique: str | Technique = Technique.PARALLEL_ADAPTERS,
    global_batch: int = 32,
    micro_batches: int | None = None,
    strategy: str = "pac",
    max_types: int = MAX_TYPES,
) -> Plan:
    """Plan ``model`` on ``cluster``: the least predicted step time under the cost model.

    ``strategy`` ``"pac"`` searches stages and groups jointly (exact on device types), on
    every way to use the devices that share CPU cores (planner/cpu_pools.py); the others
    plan a baseline with the same cost model on every device. Raises
    :class:`PlanInfeasible` when nothing fits, ValueError on bad input.
    """
    tech = Technique.parse(technique)
    ms = micro_batch_counts(global_batch, micro_batches)
    if strategy != "pac":
        return _plan_on(cluster, model, tech, global_batch, ms, strategy, max_types)
    best: Plan | None = None
    refusal: PlanInfeasible | None = None
    whole: float | None = None
    for use in pool_uses(cluster):
        try:
            found = _plan_on(use.cluster, model, tech, global_batch, ms, strategy, max_types)
        except PlanInfeasible as error:
            refusal = refusal or error  # the first use is every device: the roomiest
            continue
        if whole is None and all(len(s.used) == s.of for s in use.shares):
            whole = found.step_time_s
        if best is None or found.step_time_s < best.step_time_s:
            notes = tuple(str(share) for share in use.shares)
            if notes and whole is not None and found.step_time_s < whole:
                notes += (f"on every device of the pool(s) a step would take {whole:.4f} s",)
            best = replace(found, notes=found.notes + notes)
    if best is None:
        assert refusal is not None
        raise refusal
    return best


def _plan_on(
    cluster: Cluster,
    model: ModelProfile,
    tech: Technique,
    global_batch: int,
    ms: list[int],
    strategy: str,
    max_types: int,
) -> Plan:
    """The plan of ``strategy`` on exactly these devices (at their given speeds)."""
    costs = CostModel(cluster, model, tech)
    notes = list(MODEL_NOTES)
    if strategy == "pac":
        # Cheap plans first: the search only looks for strictly better ones.
        best = _best_of(
            [baselines.standalone(costs, global_batch, ms),
             baselines.data_parallel(costs, global_batch, ms),
             baselines.even_split(costs, global_batch, ms)]
        )
        types = device_types(costs, max_types)
        found = search(costs, types, global_batch, ms,
                       best_known=best[1] if best else math.inf)
        if found is not None:
            layout = baselines.to_devices(types.members, found.stages, found.micro_batches)
            cost = evaluate(costs, layout, global_batch)
            if cost.fits and (best is None or cost.step_time_s < best[1]):
                best = (layout, cost.step_time_s)
        if types.clustered:
            classes = "; ".join(
                "[" + ", ".join(costs.names[d] for d in m) + "]" for m in types.members
            )
            notes.append(
                f"{len(cluster.devices)} distinct devices planned as {len(types)} classes "
                f"(each priced as its slowest member; memory checked per device): {classes}"
            )
    else:
        choose = {
            "standalone": baselines.standalone,
            "data-parallel": baselines.data_parallel,
            "pipeline": baselines.pipeline,
            "even-split": baselines.even_split,
        }.get(strategy)
        if choose is None:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
        best = choose(costs, global_batch, ms)
    if best is None:
        raise PlanInfeasible(diagnose(costs, global_batch, ms))
    return build_plan(costs, best[0], global_batch, strategy, tuple(notes))


def _best_of(options: list[tuple[Layout, float] | None]) -> tuple[Layout, float] | None:
    found = [o for o in options if o is not None]
    return min(found, key=lambda o: o[1]) if found else None


def build_plan(
    costs: CostModel, layout: Layout, global_batch: int, strategy: str, notes: tuple[str, ...]
) -> Plan:
    """Turn a layout into a Plan: prices, shares, memory, schedule and cache shares."""
    cost = evaluate(costs, layout, global_batch)
    stages = []
    memory: list[tuple[str, int]] = []
    for s, ((group, i, j), sc) in enumerate(zip(layout.stages, cost.stages, strict=True)):
        names = tuple(costs.names[d] for d in group)
        stages.append(Stage(s, i, j, DeviceGroup(names, sc.shares), sc.time_s, sc.allreduce_s))
        memory.extend(zip(names, sc.memory_bytes, strict=True))
    used = [d for group, _, _ in layout.stages for d in group]
    cache: tuple[tuple[str, int], ...] = ()
    if costs.technique is Technique.PARALLEL_ADAPTERS:
        # The cache phase trains the whole side network on every used device.
        speeds = side_speeds([costs.cluster.devices[d].side_s for d in used])
        shares = proportional_shares(speeds, global_batch)
        cache = tuple((costs.names[d], s) for d, s in zip(used, shares, strict=True))
    schedule = one_f_one_b(tuple(stages), layout.micro_batches)
    return Plan(
        technique=costs.technique.value,
        global_batch=global_batch,
        micro_batches=layout.micro_batches,
        stages=tuple(stages),
        step_time_s=cost.step_time_s,
        memory_bytes=tuple(memory),
        memory_limit_bytes=tuple(
            (n, int(m)) for n, m in zip(costs.names, costs.memory, strict=True)
        ),
        cache_shares=cache,
        instructions=tuple((costs.names[d], schedule[costs.names[d]]) for d in used),
        notes=notes,
        strategy=strategy,
    )


def diagnose(costs: CostModel, global_batch: int, ms: list[int]) -> str:
    """Why nothing fits: the tightest device and stage of the roomiest plan we know.

    That plan is a pipeline over every device, biggest memory first, layers given out in
    proportion to memory, with the smallest micro-batch allowed.
    """
    L = costs.num_layers
    order = sorted(range(len(costs.names)), key=lambda d: -costs.memory[d])[:L]
    total_memory = float(costs.memory[order].sum())
    fixed_all = costs.fixed_memory(0, L)
    if fixed_all > total_memory:
        biggest = costs.names[order[0]]
        return (
            f"the model's weights and optimizer state need {gib(fixed_all)} but the "
            f"{len(order)} device(s) have {gib(total_memory)} in all (the largest, agent "
            f"{biggest!r}, has {gib(costs.memory[order[0]])}); add a device with at least "
            f"{gib(fixed_all - total_memory)} more memory or use a smaller model"
        )
    share = np.cumsum(costs.memory[order]) / total_memory
    bounds = [0] + [min(L - (len(order) - 1 - k), max(k + 1, round(float(s) * L)))
                    for k, s in enumerate(share[:-1])] + [L]
    bounds = [max(bounds[k], bounds[k - 1] + 1) if k else 0 for k in range(len(bounds))]
    bounds[-1] = L
    m = max(ms)
    layout = Layout(
        tuple(((d,), bounds[k], bounds[k + 1]) for k, d in enumerate(order)
              if bounds[k] < bounds[k + 1]), m
    )
    cost = evaluate(costs, layout, global_batch)
    worst = min(
        range(len(cost.stages)),
        key=lambda s: cost.stages[s].worst_have - cost.stages[s].worst_need,
    )
    sc = cost.stages[worst]
    (group, i, j) = layout.stages[worst]
    name = costs.names[group[sc.worst_device]]
    missing = sc.worst_need - sc.worst_have
    hint = "add a device or lower --batch"
    if m < global_batch:
        hint = "add a device or lower --micro-batch (more micro-batches)"
    return (
        f"agent {name!r} has {gib(sc.worst_have)} free, stage {worst} (layers {i}-{j - 1}) "
        f"needs {gib(sc.worst_need)} ({gib(max(missing, 0))} missing) even in the roomiest "
        f"plan (one device per stage, {m} micro-batch(es)); {hint}"
    )
