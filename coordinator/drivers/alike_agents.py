"""Agents that describe the same hardware take the median of their block timings.

Each agent times the job's blocks itself, twice or three times, while the others do the
same. Timings that short are noisy, most of all under a CPU quota (a half-core agent runs
in 5 ms slices) or beside the coordinator's own loading: on 4 alike agents capped at half
a core one run measured side-block times of 8.8 to 11.4 ms per sample and fixed costs of
430 to 664 ms per micro-batch. The planner takes such spreads for real differences: it
dealt the cache phase's samples 7, 8, 8 and 9, and the agent with 9 then held up every
step of agents that compute at one speed.

Agents alike in everything they report of their hardware (accelerator and its name or the
CPU model, cores, threads, memory, accelerator memory, PyTorch) are taken to be equally
fast: each timing is the group's median (the middle of its values, the mean of the two
middle ones). An agent that is alone of its kind keeps its own.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Hashable
from dataclasses import replace
from typing import TYPE_CHECKING

from coordinator.drivers.profile_pools import pool_of
from protos.v1 import agent_pb2

if TYPE_CHECKING:
    from coordinator.drivers.mesh_plan import BlockTiming


def hardware_of(profile: agent_pb2.DeviceProfile, pool_agents: int = 1) -> Hashable:
    """What an agent reports of its hardware, apart from its name, address, pool and what
    changes from moment to moment (free memory and disk, the matmul speed measured at
    start); and ``pool_agents``, how many agents share its CPU cores (an agent with 4
    others on its cores is slower than one alone on the same hardware)."""
    return (
        profile.accelerator or "cpu",
        profile.accelerator_name,
        profile.cpu_cores,
        max(1, profile.threads),
        profile.memory_bytes,
        profile.accelerator_memory_bytes,
        profile.torch_version,
        pool_agents,
    )


def alike_groups(profiles: dict[str, agent_pb2.DeviceProfile]) -> list[list[str]]:
    """The agents in groups of the same hardware, in the order they came (groups of one
    included)."""
    sharing = Counter(pool_of(p) for p in profiles.values() if pool_of(p))
    groups: dict[Hashable, list[str]] = {}
    for name, profile in profiles.items():
        key = hardware_of(profile, sharing[pool_of(profile)] if pool_of(profile) else 1)
        groups.setdefault(key, []).append(name)
    return list(groups.values())


def median_timings(
    timings: dict[str, BlockTiming], profiles: dict[str, agent_pb2.DeviceProfile]
) -> dict[str, BlockTiming]:
    """``timings`` with every agent of a group of alike agents given the group's median of
    each measured cost (per sample, per micro-batch, the side block's, the backward's
    ratio); an agent without a profile or a timing is left as it is."""
    result = dict(timings)
    for group in alike_groups({n: p for n, p in profiles.items() if n in timings}):
        if len(group) < 2:
            continue
        members = [timings[n] for n in group]
        median = replace(
            members[0],
            per_sample_s=statistics.median(t.per_sample_s for t in members),
            overhead_s=statistics.median(t.overhead_s for t in members),
            side_per_sample_s=statistics.median(t.side_per_sample_s for t in members),
            backward_ratio=statistics.median(t.backward_ratio for t in members),
        )
        for name in group:
            result[name] = replace(median, measured_by=timings[name].measured_by)
    return result
