"""Devices that share CPU cores: how fast each is when some are left out, and the plan."""

from __future__ import annotations

from dataclasses import replace

import pytest

from planner import Technique, plan
from planner.api import micro_batch_counts
from planner.brute import brute_force
from planner.convert import cluster_from_proto, cluster_to_proto
from planner.costs import CostModel
from planner.cpu_pools import MAX_POOL_USES, alike, cores_each, pool_uses
from planner.estimate import cluster_from_json, model_shape
from planner.profiles import Cluster, DeviceProfile, LinkProfile, Network
from planner.synthetic import device, synthetic_model

MODEL = synthetic_model(6, hidden=256, seq=32)
PA = Technique.PARALLEL_ADAPTERS
NET = Network(LinkProfile(2e9, 2e-4))
GIB = 1 << 30


def pooled(name: str, seconds: float, pool: str = "box:cpus=0-1", cores: int = 2,
           threads: int = 1) -> DeviceProfile:
    return replace(device(name, 6, seconds, 4 * GIB, overhead_s=0.004),
                   cpu_pool=pool, pool_cores=cores, threads=threads)


def test_each_device_gets_its_threads_or_its_fair_share_of_the_cores() -> None:
    assert cores_each([1, 1], 4) == [1.0, 1.0]
    assert cores_each([1, 1, 1, 1], 2) == [0.5] * 4
    assert cores_each([2, 1, 1], 2) == [1.0, 0.5, 0.5]


def test_the_devices_of_a_pool_are_as_fast_as_each_other() -> None:
    cluster = Cluster((pooled("a", 1e-3), pooled("b", 3e-3), pooled("c", 2e-3, threads=2),
                       device("phone", 6, 4e-3, 4 * GIB)), NET)
    same = {d.name: d for d in alike(cluster).devices}
    # a and b share the cores with the same threads: what they measured apart was noise.
    assert same["a"].forward_s == same["b"].forward_s == pytest.approx([2e-3] * 6)
    assert same["a"].side_s == pytest.approx([5e-4] * 6)
    assert dict(same["b"].backward_s)["lora"] == pytest.approx([3.2e-3] * 6)
    assert same["c"] == cluster.devices[2] and same["phone"] == cluster.devices[3]


def test_a_shared_pool_is_tried_at_every_size() -> None:
    lone = device("phone", 6, 4e-3, 4 * GIB)
    cluster = Cluster((*(pooled(n, 2e-3) for n in "dbca"), lone), NET)
    uses = pool_uses(cluster)
    assert [len(u.cluster.devices) for u in uses] == [5, 4, 3, 2]  # every device first
    by_name = [{d.name: d for d in u.cluster.devices} for u in uses]
    assert all(names["phone"] == lone for names in by_name)  # not in the pool: unchanged
    assert sorted(by_name[2]) == ["a", "b", "phone"]
    (share,) = uses[2].shares
    assert (share.used, share.of, share.speedup) == (("a", "b"), 4, 2.0)
    # Measured with 4 on 2 cores (half a core each), with 2 a core each: twice as fast.
    a, measured = by_name[2]["a"], cluster.devices[3]
    assert a.forward_s == pytest.approx([t / 2 for t in measured.forward_s])
    assert a.side_s == pytest.approx([t / 2 for t in measured.side_s])
    assert dict(a.backward_s)["lora"] == pytest.approx(
        [t / 2 for t in dict(measured.backward_s)["lora"]])
    assert a.micro_batch_overhead_s == pytest.approx(0.002)
    # One thread cannot use more than one core: alone it is still only twice as fast.
    assert uses[3].shares[0].speedup == 2.0
    assert "planned on 1 of them (a)" in str(uses[3].shares[0])


def test_a_pool_with_a_core_per_thread_or_no_pool_is_planned_as_given() -> None:
    roomy = Cluster(tuple(pooled(n, 2e-3, cores=4) for n in "ab"), NET)
    [use] = pool_uses(roomy)
    assert use.cluster == roomy and use.shares == ()
    plain = Cluster(tuple(device(n, 6, 2e-3, 4 * GIB) for n in "abcd"), NET)
    assert [u.cluster for u in pool_uses(plain)] == [plain]


def test_many_pools_are_tried_whole_and_at_a_device_per_core() -> None:
    devices = tuple(pooled(f"{p}{k}", 2e-3, pool=f"host{p}") for p in "abcd" for k in range(3))
    uses = pool_uses(Cluster(devices, NET))
    assert MAX_POOL_USES < 3**4
    assert len(uses) == 2**4  # each pool: all 3 devices, or 2 (one per core)
    assert len(uses[0].cluster.devices) == 12


def test_the_plan_is_the_best_over_the_ways_to_use_the_pool() -> None:
    cluster = Cluster(tuple(pooled(n, 2e-3) for n in "abcd"), NET)
    batch = 8
    chosen = plan(cluster, MODEL, PA, batch)
    exact = min(
        found[1]
        for use in pool_uses(cluster)
        if (found := brute_force(CostModel(use.cluster, MODEL, PA), batch,
                                 micro_batch_counts(batch, None))) is not None
    )
    assert chosen.step_time_s == pytest.approx(exact, rel=1e-9)
    used = {d for stage in chosen.stages for d in stage.group.devices}
    # Four one-thread devices on two cores compute as fast on two of them, and a step on
    # two pays fewer messages and fixed costs.
    assert len(used) == 2
    assert dict(chosen.cache_shares).keys() == used
    assert any("planned on 2 of them" in note for note in chosen.notes)
    # The same as two devices with a core each, measured alone at twice the speed.
    alone = Cluster(tuple(device(n, 6, 1e-3, 4 * GIB, overhead_s=0.002) for n in "ab"), NET)
    assert chosen.step_time_s == pytest.approx(plan(alone, MODEL, PA, batch).step_time_s)


def test_a_baseline_strategy_uses_every_device_of_the_pool() -> None:
    cluster = Cluster(tuple(pooled(n, 2e-3) for n in "abcd"), NET)
    chosen = plan(cluster, MODEL, Technique.LORA, 8, strategy="data-parallel")
    assert {d for stage in chosen.stages for d in stage.group.devices} == set("abcd")


def test_devices_of_a_pool_must_agree_on_its_cores() -> None:
    with pytest.raises(ValueError, match="disagree on its cores"):
        Cluster((pooled("a", 2e-3, cores=2), pooled("b", 2e-3, cores=4)), NET)
    with pytest.raises(ValueError, match="needs pool_cores >= 1"):
        pooled("a", 2e-3, cores=0)


def test_the_pool_travels_through_the_proto_and_the_cluster_file() -> None:
    cluster = Cluster((pooled("a", 2e-3, threads=2), device("b", 6, 1e-3, GIB)), NET)
    back = cluster_from_proto(cluster_to_proto(cluster))
    assert [(d.name, d.cpu_pool, d.pool_cores, d.threads) for d in back.devices] == [
        ("a", "box:cpus=0-1", 2, 2), ("b", "", 0, 1)]
    shape = model_shape({"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 64,
                         "intermediate_size": 128, "num_attention_heads": 2})
    from_file = cluster_from_json(
        {"devices": [{"name": "desk", "count": 2, "gflops": 50, "memory_gb": 4,
                      "cpu_pool": "desk", "pool_cores": 4, "threads": 4}]}, shape, 32)
    assert [(d.cpu_pool, d.pool_cores, d.threads) for d in from_file.devices] == [
        ("desk", 4, 4)] * 2
