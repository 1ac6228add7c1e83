"""A fixed cost per micro-batch: charged the same way everywhere, and it moves the plan."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from planner import Technique, plan
from planner.api import micro_batch_counts
from planner.brute import brute_force
from planner.convert import cluster_from_proto, cluster_to_proto
from planner.costs import CostModel
from planner.device_types import device_types
from planner.estimate import cluster_from_json, model_shape, split_fixed_cost
from planner.profiles import Cluster, LinkProfile, Network
from planner.synthetic import device, synthetic_model

MODEL = synthetic_model(8, hidden=256, seq=32)
PA = Technique.PARALLEL_ADAPTERS


def _cluster(overheads: tuple[float, ...], memory: int = 12 << 20) -> Cluster:
    """Four devices too small for the whole model (>= 3 stages), on a fast network."""
    speeds = (2e-3, 2e-3, 4e-3, 5e-3)
    devices = tuple(
        device(f"dev{d}", 8, s, memory, overhead_s=o)
        for d, (s, o) in enumerate(zip(speeds, overheads, strict=True))
    )
    return Cluster(devices, Network(LinkProfile(1e9 / 8, 1e-4)))


def test_stage_time_carries_the_groups_largest_overhead() -> None:
    plain = CostModel(_cluster((0.0,) * 4), MODEL, PA)
    costly = CostModel(_cluster((0.001, 0.004, 0.002, 0.0)), MODEL, PA)
    for group in ((0,), (1,), (0, 2), (0, 1, 3), (3,)):
        base = plain.stage(group, 1, 5, 4, 1)
        got = costly.stage(group, 1, 5, 4, 1)
        expected = max((0.001, 0.004, 0.002, 0.0)[d] for d in group)
        assert got.time_s - base.time_s == pytest.approx(expected, abs=1e-12)
        # The split and the memory are those of the plain model: the cost is per micro-batch.
        assert got.shares == base.shares and got.memory_bytes == base.memory_bytes


def test_overhead_makes_the_planner_choose_fewer_micro_batches_and_stays_exact() -> None:
    batch = 16
    chosen = []
    for overhead in (0.0, 0.02):
        cluster = _cluster((overhead,) * 4)
        got = plan(cluster, MODEL, PA, batch)
        exact = brute_force(CostModel(cluster, MODEL, PA), batch, micro_batch_counts(batch, None))
        assert exact is not None
        assert got.step_time_s == pytest.approx(exact[1], rel=1e-9)
        chosen.append(got.micro_batches)
    # Without the fixed cost a micro-batch of one sample looks as efficient as any.
    assert chosen[0] == batch
    assert chosen[1] < chosen[0]


def test_step_time_grows_by_the_overhead_per_micro_batch_for_a_fixed_plan() -> None:
    # One stage on one device, M micro-batches: M fixed costs are added.
    one = Cluster((device("solo", 8, 1e-3, 1 << 30, overhead_s=0.003),))
    zero = Cluster((device("solo", 8, 1e-3, 1 << 30),))
    for m in (1, 2, 4, 8):
        with_cost = plan(one, MODEL, PA, 8, micro_batches=m).step_time_s
        without = plan(zero, MODEL, PA, 8, micro_batches=m).step_time_s
        assert with_cost - without == pytest.approx(m * 0.003)


def test_devices_differing_only_in_overhead_are_distinct_types() -> None:
    costs = CostModel(_cluster((0.0, 0.003, 0.0, 0.0)), MODEL, PA)
    types = device_types(costs)
    assert (0,) in types.members and (1,) in types.members
    clustered = device_types(CostModel(_cluster((0.001, 0.003, 0.002, 0.0)), MODEL, PA),
                             max_types=1)
    # A class is priced as its worst member: the largest fixed cost.
    assert clustered.clustered and float(clustered.overhead[0]) == 0.003


def test_overhead_survives_the_wire_and_the_cluster_file() -> None:
    cluster = _cluster((0.0, 0.0025, 0.001, 0.0))
    back = cluster_from_proto(cluster_to_proto(cluster))
    assert [d.micro_batch_overhead_s for d in back.devices] == [0.0, 0.0025, 0.001, 0.0]
    shape = model_shape({"model_type": "bert", "hidden_size": 64, "intermediate_size": 256,
                         "num_hidden_layers": 2, "num_attention_heads": 4})
    data = json.loads(json.dumps({"devices": [
        {"name": "a", "gflops": 10, "memory_gb": 1, "micro_batch_overhead_ms": 2.5},
        {"name": "b", "gflops": 10, "memory_gb": 1, "micro_batch_overhead_s": 0.004},
        {"name": "c", "gflops": 10, "memory_gb": 1},
    ]}))
    read = cluster_from_json(data, shape, 16)
    assert [d.micro_batch_overhead_s for d in read.devices] == [0.0025, 0.004, 0.0]
    for bad, words in (({"micro_batch_overhead_ms": -1}, ">= 0"),
                       ({"micro_batch_overhead_ms": 1, "micro_batch_overhead_s": 1}, "not both"),
                       ({"micro_batch_overhead_ms": "fast"}, "number")):
        spec = {"name": "x", "gflops": 1, "memory_gb": 1, **bad}
        with pytest.raises(ValueError, match=words):
            cluster_from_json({"devices": [spec]}, shape, 16)
    with pytest.raises(ValueError, match="micro_batch_overhead_s"):
        replace(cluster.devices[0], micro_batch_overhead_s=float("nan"))


def test_random_overheads_keep_fixed_micro_batch_plans_exact() -> None:
    rng = np.random.default_rng(4)
    for trial in range(12):
        overheads = tuple(float(x) for x in rng.uniform(0, 0.02, size=4))
        cluster = _cluster(overheads, memory=int(rng.uniform(8, 40)) << 20)
        for m in (2, 4):
            exact = brute_force(CostModel(cluster, MODEL, PA), 8, [m])
            if exact is None:
                continue
            got = plan(cluster, MODEL, PA, 8, micro_batches=m)
            assert got.step_time_s == pytest.approx(exact[1], rel=1e-9), (trial, m)


def test_fixed_cost_from_two_batch_sizes() -> None:
    # 2 ms per call + 5 ms per sample, timed at 1 and 8 samples (either order).
    per_sample, fixed = split_fixed_cost(8, 0.042, 1, 0.007)
    assert per_sample == pytest.approx(0.005) and fixed == pytest.approx(0.002)
    # Noise that tilts the line below zero at no samples: no negative fixed cost.
    per_sample, fixed = split_fixed_cost(1, 0.004, 4, 0.020)
    assert fixed == 0.0 and per_sample == pytest.approx(0.005)
    # A larger batch measured faster than a smaller one (noise on a busy machine): the
    # per-sample time stays positive, the fixed cost is zero.
    per_sample, fixed = split_fixed_cost(1, 0.010, 8, 0.009)
    assert fixed == 0.0 and per_sample == pytest.approx(0.009 / 8)
    with pytest.raises(ValueError, match="two different batch sizes"):
        split_fixed_cost(4, 0.01, 4, 0.02)
