"""Memory limits are honoured; slow links push towards fewer stages."""

from __future__ import annotations

import numpy as np
import pytest

from planner import Cluster, LinkProfile, Network, PlanInfeasible, plan
from planner.synthetic import MIB, device, random_cluster, synthetic_model


def test_no_plan_exceeds_any_device_memory() -> None:
    rng = np.random.default_rng(3)
    checked = 0
    for trial in range(60):
        model = synthetic_model(int(rng.integers(2, 9)), hidden=256, seq=32)
        cluster = random_cluster(rng, int(rng.integers(1, 5)), model, memory_mib=(3, 30))
        try:
            got = plan(cluster, model, ["parallel-adapters", "full"][trial % 2], 8)
        except PlanInfeasible:
            continue
        limits = dict(got.memory_limit_bytes)
        for name, used in got.memory_bytes:
            assert 0 < used <= limits[name]
        checked += 1
    assert checked >= 20


def test_infeasible_names_device_stage_missing_memory_and_a_remedy() -> None:
    model = synthetic_model(4)  # ~28 MiB of weights per layer
    cluster = Cluster(
        (device("jetson-1", 4, 1e-3, 40 * MIB), device("jetson-2", 4, 1e-3, 90 * MIB)),
        Network(LinkProfile(125e6)),
    )
    with pytest.raises(PlanInfeasible) as caught:
        plan(cluster, model, "parallel-adapters", 4)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "'jetson-2' has 90 MiB free" in message and "missing" in message
    assert "stage 0" in message and "add a device" in message


def test_activation_memory_infeasible_points_at_stage_and_micro_batch() -> None:
    model = synthetic_model(2, hidden=256, seq=32)
    # Weights fit; a full backward's stash for even one sample does not.
    weights = sum(x.weight_bytes * 4 for x in model.layers)  # weights + grad + Adam
    cluster = Cluster((device("phone", 2, 1e-3, weights + MIB // 2),), Network(LinkProfile(1e8)))
    with pytest.raises(PlanInfeasible) as caught:
        plan(cluster, model, "full", 4)
    message = str(caught.value)
    assert "'phone'" in message and "stage 0" in message and "missing" in message


def test_memory_moves_layers_off_a_small_device() -> None:
    model = synthetic_model(8, hidden=256, seq=32)
    small = 3 * model.layers[0].weight_bytes
    cluster = Cluster(
        (device("fast-small", 8, 1e-3, small), device("slow-big", 8, 4e-3, 1 << 34)),
        Network(LinkProfile(1e9)),
    )
    got = plan(cluster, model, "parallel-adapters", 8)
    for stage in got.stages:
        if "fast-small" in stage.group.devices:
            assert stage.end - stage.start <= 2


def _equal_cluster(bandwidth_bps: float) -> Cluster:
    return Cluster(
        tuple(device(f"dev{k}", 8, 2e-3, 1 << 34) for k in range(4)),
        Network(LinkProfile(bandwidth_bps, 1e-4)),
    )


def test_a_slow_network_pushes_towards_fewer_stages() -> None:
    model = synthetic_model(8)
    fast = plan(_equal_cluster(1e9), model, "full", 16)
    slow = plan(_equal_cluster(1e6), model, "full", 16)
    assert len(fast.stages) > 1
    assert len(slow.stages) < len(fast.stages)
    assert slow.step_time_s > fast.step_time_s


def test_one_slow_device_link_keeps_that_device_out() -> None:
    model = synthetic_model(8)
    devices = tuple(device(f"dev{k}", 8, 2e-3, 1 << 34) for k in range(3))
    slow = LinkProfile(1e5, 1e-2)
    network = Network(LinkProfile(10e9, 1e-4),
                      (("dev0", "dev2", slow), ("dev1", "dev2", slow)))
    got = plan(Cluster(devices, network), model, "full", 16)
    used = {d for s in got.stages for d in s.group.devices}
    assert "dev2" not in used and len(used) == 2
