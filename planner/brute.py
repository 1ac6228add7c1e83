"""Brute force over every plan of a small cluster: the yardstick the search is tested on."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

from planner.costs import CostModel, Layout, StageCost


def _ordered_groups(devices: tuple[int, ...], count: int) -> Iterator[tuple[tuple[int, ...], ...]]:
    """Every sequence of ``count`` disjoint nonempty subsets of ``devices``."""
    if count == 0:
        yield ()
        return
    for size in range(1, len(devices) - count + 2):
        for first in itertools.combinations(devices, size):
            rest = tuple(d for d in devices if d not in first)
            for tail in _ordered_groups(rest, count - 1):
                yield (first, *tail)


def brute_force(
    costs: CostModel, global_batch: int, micro_batch_counts: list[int]
) -> tuple[Layout, float] | None:
    """The feasible layout with the least step time, trying every one (None: none fits)."""
    n = len(costs.names)
    L = costs.num_layers
    devices = tuple(range(n))
    best: tuple[Layout, float] | None = None
    priced: dict[tuple[tuple[int, ...], int, int, int, int], StageCost] = {}

    def stage(group: tuple[int, ...], i: int, j: int, b: int, inflight: int) -> StageCost:
        key = (group, i, j, b, inflight)
        if key not in priced:
            priced[key] = costs.stage(group, i, j, b, inflight)
        return priced[key]

    for m in micro_batch_counts:
        b = global_batch // m
        for count in range(1, min(n, L) + 1):
            for cuts in itertools.combinations(range(1, L), count - 1):
                bounds = (0, *cuts, L)
                for groups in _ordered_groups(devices, count):
                    priced_stages = [
                        stage(g, bounds[s], bounds[s + 1], b, min(m, count - s))
                        for s, g in enumerate(groups)
                    ]
                    if not all(p.fits for p in priced_stages):
                        continue
                    # Summed in stage order, exactly as costs.evaluate does.
                    step = sum(p.time_s + p.allreduce_s for p in priced_stages) + (m - 1) * max(
                        p.time_s for p in priced_stages
                    )
                    if best is None or step < best[1]:
                        layout = Layout(
                            tuple((g, bounds[s], bounds[s + 1]) for s, g in enumerate(groups)), m
                        )
                        best = (layout, step)
    return best if best is None or math.isfinite(best[1]) else None
