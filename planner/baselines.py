"""The baselines, planned with the same cost model as PAC so comparisons are fair.

- standalone: the best single device holding all layers;
- data parallel (EDDL-like): one stage of all layers on every device that can hold it;
- pipeline (Eco-FL-like): one device per stage, cut optimally by the same search;
- even split: one device per stage, layers split evenly, in the cluster's order.
Each picks its best micro-batch count among those allowed.
"""

from __future__ import annotations

from planner.costs import CostModel, Layout, evaluate
from planner.device_types import device_types
from planner.search import search


def _best(
    costs: CostModel, layouts: list[Layout], global_batch: int
) -> tuple[Layout, float] | None:
    best: tuple[Layout, float] | None = None
    for layout in layouts:
        cost = evaluate(costs, layout, global_batch)
        if cost.fits and (best is None or cost.step_time_s < best[1]):
            best = (layout, cost.step_time_s)
    return best


def standalone(costs: CostModel, global_batch: int, ms: list[int]) -> tuple[Layout, float] | None:
    L = costs.num_layers
    return _best(
        costs,
        [Layout((((d,), 0, L),), m) for d in range(len(costs.names)) for m in ms],
        global_batch,
    )


def data_parallel(
    costs: CostModel, global_batch: int, ms: list[int]
) -> tuple[Layout, float] | None:
    L = costs.num_layers
    holders = tuple(d for d in range(len(costs.names))
                    if costs.fixed_memory(0, L) <= costs.memory[d])
    if not holders:
        return None
    return _best(costs, [Layout(((holders, 0, L),), m) for m in ms], global_batch)


def even_split(costs: CostModel, global_batch: int, ms: list[int]) -> tuple[Layout, float] | None:
    L = costs.num_layers
    n = min(len(costs.names), L)
    bounds = [round(k * L / n) for k in range(n + 1)]
    stages = tuple(((d,), bounds[d], bounds[d + 1]) for d in range(n))
    return _best(costs, [Layout(stages, m) for m in ms], global_batch)


def pipeline(costs: CostModel, global_batch: int, ms: list[int]) -> tuple[Layout, float] | None:
    """One device per stage; the cut and the order are the search's (groups of one)."""
    types = device_types(costs)
    found = search(costs, types, global_batch, ms, max_group=1)
    if found is None:
        return None
    layout = to_devices(types.members, found.stages, found.micro_batches)
    cost = evaluate(costs, layout, global_batch)
    return (layout, cost.step_time_s) if cost.fits else None


def to_devices(
    members: tuple[tuple[int, ...], ...],
    stages: tuple[tuple[tuple[int, ...], int, int], ...],
    micro_batches: int,
) -> Layout:
    """Give each stage real devices: ``counts[k]`` members of type ``k``, in order."""
    pools = [list(m) for m in members]
    out = []
    for counts, i, j in stages:
        group: list[int] = []
        for k, n in enumerate(counts):
            group.extend(pools[k][:n])
            del pools[k][:n]
        out.append((tuple(sorted(group)), i, j))
    return Layout(tuple(out), micro_batches)
