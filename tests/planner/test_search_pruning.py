"""The search's shortcuts (prefix bounds, pruning) leave its answers unchanged."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from planner.costs import CostModel
from planner.device_types import device_types
from planner.profiles import Technique
from planner.search import Compositions, Prune, _stage_tables, prefix_bound, run_dp
from planner.synthetic import random_cluster, synthetic_model


def _setups(seed: int, count: int):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    for trial in range(count):
        layers = int(rng.integers(4, 13))
        model = synthetic_model(layers, hidden=256, seq=32)
        cluster = random_cluster(rng, int(rng.integers(2, 7)), model,
                                 num_types=int(rng.integers(1, 4)), memory_mib=(6, 60),
                                 bandwidth_mbps=(100, 2000),
                                 overhead_ms=(0.0, 10.0) if trial % 2 else None)
        costs = CostModel(cluster, model, Technique.PARALLEL_ADAPTERS)
        types = device_types(costs)
        m = int(rng.choice([2, 4]))
        b = 8 // m
        comps = Compositions(types.counts, b)
        tables = _stage_tables(costs, types, comps, m, b, math.inf)
        yield comps, tables, m


@pytest.mark.parametrize("seed", [3, 4])
def test_prefix_bound_reads_the_layers_reversed(seed: int) -> None:
    checked = 0
    for comps, tables, m in _setups(seed, 25):
        relaxed = replace(tables, cap=0)
        whole = run_dp(comps, relaxed, m, math.inf, strict=False)
        prefix = prefix_bound(comps, tables, m, math.inf, strict=False)
        L = tables.time.shape[1]
        assert (prefix[:, 0] == 0).all()
        if whole is None:
            assert not np.isfinite(prefix[-1, L])
            continue
        # Covering every layer with at most every device: the least relaxed sum itself.
        assert prefix[-1, L] == pytest.approx(whole.sum_s, rel=1e-12)
        # Each stage boundary of that plan: its first stages bound the prefix from above.
        used = np.zeros(len(comps.shape), dtype=np.int64)
        total = 0.0
        for counts, i, j in whole.stages:
            used += counts
            g = int(np.ravel_multi_index(counts, comps.shape))
            r = tables.row(g)
            total += float(tables.time[r, i, j] + tables.allreduce[r, i, j])
            index = int(np.ravel_multi_index(tuple(int(x) for x in used), comps.shape))
            assert prefix[index, j] <= total * (1 + 1e-12)
        checked += 1
    assert checked >= 10


def test_pruning_keeps_every_plan_below_the_limit() -> None:
    checked = 0
    for comps, tables, m in _setups(5, 25):
        plain = run_dp(comps, tables, m, math.inf, strict=False)
        if plain is None:
            continue
        prefix = prefix_bound(comps, tables, m, math.inf, strict=False)
        above = run_dp(comps, tables, m, math.inf, False, prune=Prune(prefix, plain.sum_s * 1.01))
        assert above is not None and above.sum_s == pytest.approx(plain.sum_s, rel=1e-12)
        # Nothing sums below the optimum: a limit at it leaves no plan.
        assert run_dp(comps, tables, m, math.inf, False,
                      prune=Prune(prefix, plain.sum_s * (1 - 1e-9))) is None
        checked += 1
    assert checked >= 10
