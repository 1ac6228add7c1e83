"""The DP's plan is optimal for its cost model: equal to brute force on small clusters."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from planner import PlanInfeasible, Technique, plan
from planner.api import micro_batch_counts
from planner.brute import brute_force
from planner.costs import CostModel, Layout, evaluate
from planner.synthetic import random_cluster, synthetic_model

TECHNIQUES = list(Technique)


def _instances(seed: int, count: int):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    for trial in range(count):
        layers = int(rng.integers(1, 9))
        devices = int(rng.integers(1, 5))
        model = synthetic_model(layers, hidden=256, seq=32)
        # Every third instance has repeated device kinds (exact types with counts > 1).
        kinds = int(rng.integers(1, 3)) if trial % 3 == 0 else None
        # Every other instance has fixed costs per micro-batch (against 1-8 ms per sample
        # and layer: enough to change the best micro-batch count).
        overhead = (0.0, 20.0) if trial % 2 else None
        cluster = random_cluster(rng, devices, model, num_types=kinds, memory_mib=(3, 40),
                                 bandwidth_mbps=(100, 2000), overhead_ms=overhead)
        batch = int(rng.choice([1, 2, 4, 6, 8, 12]))
        if trial % 3 == 1:
            # Smaller micro-batches pad less (the data's lengths; see test_micro_batch_tokens).
            sizes = [b for b in range(1, batch) if batch % b == 0]
            tokens = tuple((b, float(rng.uniform(0.4, 1.0))) for b in sizes)
            model = replace(model, micro_batch_tokens=tokens)
        if trial % 3 != 2:
            # One stage on n devices: each cuts its rows, so the group's size changes the
            # scale (less than the micro-batch's, more devices less).
            scales = dict(model.micro_batch_tokens)
            one_stage = tuple(
                (b, n, scales.get(b, 1.0) * float(rng.uniform(0.5, 1.0)) ** (n - 1))
                for b in range(1, batch + 1)
                if batch % b == 0
                for n in range(2, min(devices, b) + 1)
            )
            model = replace(model, one_stage_tokens=one_stage)
        yield trial, cluster, model, TECHNIQUES[trial % 4], batch


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_dp_equals_brute_force(seed: int) -> None:
    shapes = {"multi-stage": 0, "grouped": 0, "infeasible": 0}
    for trial, cluster, model, technique, batch in _instances(seed, 100):
        costs = CostModel(cluster, model, technique)
        reference = brute_force(costs, batch, micro_batch_counts(batch, None))
        if reference is None:
            with pytest.raises(PlanInfeasible):
                plan(cluster, model, technique, batch)
            shapes["infeasible"] += 1
            continue
        got = plan(cluster, model, technique, batch)
        assert got.step_time_s == pytest.approx(reference[1], rel=1e-9), (trial, reference[0])
        shapes["multi-stage"] += len(got.stages) > 1
        shapes["grouped"] += any(len(g) > 1 for g in got.groups)
    # The instances exercise every part of the search, not just one-device plans.
    assert all(n >= 5 for n in shapes.values()), shapes


def test_fixed_micro_batch_count_is_optimal_for_that_count() -> None:
    for _, cluster, model, technique, batch in _instances(21, 40):
        if batch % 2:
            continue
        costs = CostModel(cluster, model, technique)
        reference = brute_force(costs, batch, [2])
        if reference is None:
            continue
        got = plan(cluster, model, technique, batch, micro_batches=2)
        assert got.micro_batches == 2
        assert got.step_time_s == pytest.approx(reference[1], rel=1e-9)


def test_plan_prediction_is_the_cost_model_of_its_own_layout() -> None:
    for _, cluster, model, technique, batch in _instances(31, 30):
        try:
            got = plan(cluster, model, technique, batch)
        except PlanInfeasible:
            continue
        costs = CostModel(cluster, model, technique)
        index = {n: k for k, n in enumerate(costs.names)}
        layout = Layout(
            tuple((tuple(index[d] for d in s.group.devices), s.start, s.end) for s in got.stages),
            got.micro_batches,
        )
        assert evaluate(costs, layout, batch).step_time_s == pytest.approx(got.step_time_s)
        assert sum(s.end - s.start for s in got.stages) == len(model.layers)
        for stage in got.stages:
            assert sum(stage.group.shares) == got.micro_batch_size


def test_many_distinct_devices_are_planned_as_classes_and_fit() -> None:
    rng = np.random.default_rng(5)
    model = synthetic_model(6, hidden=256, seq=32)
    cluster = random_cluster(rng, 6, model, memory_mib=(8, 40), bandwidth_mbps=(800, 1000))
    got = plan(cluster, model, "parallel-adapters", 8, max_types=2)
    assert any("classes" in note for note in got.notes)
    limits = dict(got.memory_limit_bytes)
    assert all(used <= limits[name] for name, used in got.memory_bytes)
    exact = brute_force(CostModel(cluster, model, Technique.PARALLEL_ADAPTERS), 8,
                        micro_batch_counts(8, None))
    assert exact is not None
    assert got.step_time_s >= exact[1] * (1 - 1e-9)
