"""Which agents a job's profiling runs on: one per CPU pool, standing for the others.

Agents of one CPU pool (``DeviceProfile.cpu_pool``: the same machine and cores) with the
same threads are as fast as each other, so one of them measures for all: profiling all of
them at once would time the same blocks several times over on shared cores (4 one-thread
agents on 2 cores take twice as long as one alone). The planner takes a pooled device's
times as measured with every agent of its pool busy (planner/cpu_pools.py); the one that
measured had its threads' cores (or its fair share with the pool's other measurers), so
each agent it stands for gets its times scaled by the cores it had against that agent's
fair share of the pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from planner.cpu_pools import cores_each
from protos.v1 import agent_pb2


@dataclass(frozen=True)
class Measurer:
    """An agent that profiles the job: ``pool_agents`` agents of its pool measure at the
    same time (0: not in a pool); ``stands_for``: each agent that takes its times, and the
    factor its times are multiplied by for that agent."""

    name: str
    pool_agents: int
    stands_for: tuple[tuple[str, float], ...]


def pool_of(profile: agent_pb2.DeviceProfile) -> str:
    """The CPU pool an agent's compute shares with the agents of the same pool: its
    ``cpu_pool`` when it computes on the CPU; "" (its own) on an accelerator."""
    return profile.cpu_pool if profile.accelerator in ("", "cpu") else ""


def measurers(
    names: Sequence[str], profiles: dict[str, agent_pb2.DeviceProfile]
) -> list[Measurer]:
    """Who measures for whom: every agent outside a pool for itself; in a pool, the first
    agent of each thread count for every agent of the pool with that thread count."""
    alone: list[Measurer] = []
    pools: dict[str, list[str]] = {}
    for name in names:
        profile = profiles.get(name)
        pool = pool_of(profile) if profile is not None else ""
        if pool:
            pools.setdefault(pool, []).append(name)
        else:
            alone.append(Measurer(name, 0, ((name, 1.0),)))
    pooled = []
    for members in pools.values():
        threads = [max(1, profiles[m].threads) for m in members]
        cores = max(1, profiles[members[0]].cpu_cores)
        fair = cores_each(threads, cores)  # each agent's cores with the whole pool busy
        measuring = [k for k, t in enumerate(threads) if t not in threads[:k]]
        had = dict(zip(measuring, cores_each([threads[k] for k in measuring], cores),
                       strict=True))
        for k in measuring:
            stands_for = tuple(
                (members[m], had[k] / fair[m]) for m in range(len(members))
                if threads[m] == threads[k]
            )
            pooled.append(Measurer(members[k], len(measuring), stands_for))
    return alone + pooled
