"""Agents of the same hardware take the median of their block timings
(coordinator/drivers/alike_agents.py): noise does not make alike agents look unequal."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from coordinator.drivers.alike_agents import alike_groups, median_timings
from coordinator.drivers.mesh_plan import BlockTiming, profile_agents
from coordinator.jobs import JobSpec
from protos.v1 import agent_pb2


def _profile(name: str, **changes: Any) -> agent_pb2.DeviceProfile:
    fields: dict[str, Any] = {
        "name": name,
        "accelerator": "cpu",
        "accelerator_name": "AMD EPYC",
        "cpu_cores": 1,
        "threads": 1,
        "memory_bytes": 8 << 30,
        "torch_version": "2.13.0",
        "cpu_pool": f"host:cgroup=/pac-mesh/{name}",
        "matmul_gflops": 10.0 + len(name),
        "available_memory_bytes": (4 << 30) + len(name),
    }
    fields.update(changes)
    return agent_pb2.DeviceProfile(**fields)


def test_alike_agents_are_grouped_by_what_they_report_of_their_hardware() -> None:
    profiles = {
        "a": _profile("a"),
        "b": _profile("b"),  # another free memory and matmul speed: still alike
        "c": _profile("c", cpu_cores=2),
        "d": _profile("d", threads=2),
        "e": _profile("e", accelerator="cuda", accelerator_name="Orin"),
        "f": _profile("f"),
        # Two agents on one pool of cores: slower than an alike agent alone.
        "g": _profile("g", cpu_pool="box:cpus=0"),
        "h": _profile("h", cpu_pool="box:cpus=0"),
    }
    assert alike_groups(profiles) == [["a", "b", "f"], ["c"], ["d"], ["e"], ["g", "h"]]


def test_each_agent_of_a_group_takes_the_groups_median_of_every_cost() -> None:
    timings = {
        "a": BlockTiming(0.100, 0.430, 0.0088, 0.0),
        "b": BlockTiming(0.104, 0.664, 0.0114, 0.0),
        "c": BlockTiming(0.101, 0.613, 0.0091, 0.0, measured_by="x"),
        "d": BlockTiming(0.102, 0.533, 0.0100, 0.0),
        "slow": BlockTiming(0.300, 1.0, 0.03, 0.0),
    }
    profiles = {name: _profile(name) for name in "abcd"}
    profiles["slow"] = _profile("slow", accelerator_name="ARM Cortex-A57")
    result = median_timings(timings, profiles)
    for name in "abcd":
        assert result[name].per_sample_s == pytest.approx(0.1015)
        assert result[name].overhead_s == pytest.approx((0.533 + 0.613) / 2)
        assert result[name].side_per_sample_s == pytest.approx((0.0091 + 0.0100) / 2)
    assert result["c"].measured_by == "x" and result["a"].measured_by == ""
    assert result["slow"] == timings["slow"]
    # An agent without a timing (not measured) is no member of a group.
    assert median_timings({"a": timings["a"]}, profiles) == {"a": timings["a"]}


class _Stub:
    def __init__(self, block_s: float, side_s: float) -> None:
        self.block_s, self.side_s = block_s, side_s

    async def Profile(self, request: Any, metadata: Any = None) -> agent_pb2.ProfileReply:
        return agent_pb2.ProfileReply(
            layers=[agent_pb2.LayerProfile(index=i, forward_seconds=self.block_s) for i in (0, 1)],
            second_batch_seconds=[self.block_s / 4] * 2,
            side_seconds=self.side_s,
            side_second_batch_seconds=self.side_s / 4,
        )


def test_the_coordinator_plans_alike_agents_on_their_median() -> None:
    stubs = {"a": _Stub(0.02, 0.016), "b": _Stub(0.03, 0.012), "c": _Stub(0.04, 0.010)}
    profiles = {name: _profile(name) for name in stubs}
    spec = JobSpec(model_dir="/models/m", data_path="d.jsonl", task="classification")
    timings = asyncio.run(profile_agents(stubs, spec, (), profiles=profiles))  # type: ignore[arg-type]
    alone = asyncio.run(profile_agents({"b": stubs["b"]}, spec, ()))  # type: ignore[dict-item]
    assert timings["a"] == timings["b"] == timings["c"] == alone["b"]


class _Recording(_Stub):
    def __init__(self) -> None:
        super().__init__(0.02, 0.01)
        self.repeats: list[int] = []

    async def Profile(self, request: Any, metadata: Any = None) -> agent_pb2.ProfileReply:
        self.repeats.append(request.repeats)
        return await super().Profile(request, metadata)


def test_agents_measured_beside_enough_alike_ones_time_each_thing_once() -> None:
    from coordinator.drivers.mesh_plan import ALIKE_MEDIAN_AGENTS, ALIKE_REPEATS, PROFILE_REPEATS

    assert ALIKE_MEDIAN_AGENTS == 3 and ALIKE_REPEATS < PROFILE_REPEATS
    spec = JobSpec(model_dir="/models/m", data_path="d.jsonl", task="classification")
    profiles = {n: _profile(n) for n in ("a", "b", "c")}
    profiles["laptop"] = _profile("laptop", cpu_cores=4)
    # Four agents on one pool of cores: one of them measures, so it has no alike peers.
    profiles.update({n: _profile(n, cpu_pool="box:cpus=0-1") for n in ("p", "q", "r", "s")})
    stubs = {name: _Recording() for name in profiles}
    asyncio.run(profile_agents(stubs, spec, (), profiles=profiles))  # type: ignore[arg-type]
    asked = {name: stub.repeats for name, stub in stubs.items()}
    assert asked == {
        "a": [ALIKE_REPEATS],
        "b": [ALIKE_REPEATS],
        "c": [ALIKE_REPEATS],
        "laptop": [PROFILE_REPEATS],
        "p": [PROFILE_REPEATS],
        "q": [],
        "r": [],
        "s": [],
    }
    # Two alike agents are too few for a median to stand for the repeats.
    two = {n: _Recording() for n in ("a", "b")}
    asyncio.run(profile_agents(two, spec, (), profiles=profiles))  # type: ignore[arg-type]
    assert [s.repeats for s in two.values()] == [[PROFILE_REPEATS], [PROFILE_REPEATS]]
