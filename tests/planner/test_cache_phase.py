"""Cache-phase shares and the redistribution after epoch 1."""

from __future__ import annotations

import numpy as np
import pytest

from planner import Cluster, LinkProfile, Network, plan
from planner.cache_phase import proportional_shares, redistribution
from planner.plan import DeviceGroup, Stage
from planner.synthetic import device, synthetic_model


def test_shares_sum_exactly_and_follow_speed() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        weights = rng.uniform(0.1, 10, size=int(rng.integers(1, 9)))
        total = int(rng.integers(0, 1000))
        shares = proportional_shares(weights.tolist(), total)
        assert sum(shares) == total
        exact = total * weights / weights.sum()
        assert np.all(np.abs(np.array(shares) - exact) < 1)
    assert proportional_shares([3, 1], 8) == (6, 2)
    with pytest.raises(ValueError):
        proportional_shares([0, 0], 4)


def test_plan_cache_shares_are_proportional_to_side_speed() -> None:
    cluster = Cluster(
        (device("a", 4, 1e-3, 1 << 34), device("b", 4, 3e-3, 1 << 34)),
        Network(LinkProfile(1e10)),
    )
    got = plan(cluster, synthetic_model(4, hidden=256, seq=32), "parallel-adapters", 32)
    shares = dict(got.cache_shares)
    assert sum(shares.values()) == 32
    if len(shares) == 2:
        assert shares == {"a": 24, "b": 8}


def _stage(index: int, start: int, end: int, devices: tuple[str, ...],
           shares: tuple[int, ...]) -> Stage:
    return Stage(index, start, end, DeviceGroup(devices, shares), 0.0, 0.0)


def test_nothing_moves_on_one_device() -> None:
    moved = redistribution([_stage(0, 0, 4, ("a",), (4,))], 4, 1, [("a", 4)], [10] * 4, 40)
    assert moved.bytes_moved == 0


def test_pipeline_of_two_moves_the_other_half_of_the_layers() -> None:
    stages = [_stage(0, 0, 2, ("a",), (2,)), _stage(1, 2, 4, ("b",), (2,))]
    moved = redistribution(stages, 4, 2, [("a", 2), ("b", 2)], [100, 100, 10, 10], 40)
    # Each device keeps its own layers for its 20 samples and needs the other stage's.
    assert dict(moved.bytes_received) == {"a": 20 * 20, "b": 20 * 200}
    assert moved.bytes_moved == 20 * 20 + 20 * 200


def test_data_parallel_group_keeps_its_own_samples() -> None:
    stages = [_stage(0, 0, 3, ("a", "b"), (3, 1))]
    moved = redistribution(stages, 4, 1, [("a", 3), ("b", 1)], [5, 5, 5], 100)
    assert moved.bytes_moved == 0
    assert dict(moved.shares) == {"a": 75, "b": 25}
