"""Devices that share a machine's CPU cores, and which of them a plan should use.

Agents started on one machine (the local mesh, a docker-compose cluster without CPU limits)
compute on the same cores: while all of them compute, each gets its fair share, and when
some are left out the others get more. The coordinator measures all of a job's agents at
once, so a pooled device's times are those of its fair share with every device of its
pool busy (``DeviceProfile.cpu_pool``).

:func:`pool_uses` lists the ways to use the pools whose devices' threads outnumber their
cores: the ``k`` fastest devices of each such pool for every ``k``, each used device's
times divided by how many more cores it gets than when it was measured. The planner plans
every way and keeps the fastest: 4 one-thread agents on 2 cores compute as fast on 2 of
them as on all 4, and a step on 2 sends fewer messages.

The devices of a pool with the same threads run on the same cores, so they are as fast as
each other: each is given their mean times (:func:`alike`), and what one measured faster
than another was noise (it would skew the shares of a mini-batch and of the cache).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from planner.profiles import Cluster, DeviceProfile

# Beyond this many combinations each pool is tried whole and at one device per free core.
MAX_POOL_USES = 64


@dataclass(frozen=True)
class PoolShare:
    """How one shared pool is used: ``used`` of its devices (named), each ``speedup``
    times as fast as measured."""

    pool: str
    cores: int
    used: tuple[str, ...]
    of: int
    speedup: float

    def __str__(self) -> str:
        if len(self.used) == self.of:
            return (
                f"CPU pool {self.pool!r} ({self.cores} cores) is shared by {self.of} devices: "
                "planned on all of them, at the speed measured with all of them at once"
            )
        return (
            f"CPU pool {self.pool!r} ({self.cores} cores) is shared by {self.of} devices: "
            f"planned on {len(self.used)} of them ({', '.join(self.used)}), each "
            f"{self.speedup:.2f}x as fast as measured with all {self.of} at once"
        )


@dataclass(frozen=True)
class PoolUse:
    """The devices a plan may use (times scaled to their share of their pool's cores)."""

    cluster: Cluster
    shares: tuple[PoolShare, ...] = ()


def cores_each(threads: Sequence[int], cores: int) -> list[float]:
    """The cores each of some devices computing at once on ``cores`` cores gets: its
    threads while they fit, else its fair share (in proportion to its threads)."""
    total = sum(threads)
    if total <= cores:
        return [float(t) for t in threads]
    return [cores * t / total for t in threads]


def faster(device: DeviceProfile, speedup: float) -> DeviceProfile:
    """``device`` computing ``speedup`` times as fast (every time divided by it)."""
    if speedup == 1.0:
        return device
    return replace(
        device,
        forward_s=tuple(t / speedup for t in device.forward_s),
        side_s=tuple(t / speedup for t in device.side_s),
        backward_s=tuple(
            (name, tuple(t / speedup for t in times)) for name, times in device.backward_s
        ),
        gflops=device.gflops * speedup,
        micro_batch_overhead_s=device.micro_batch_overhead_s / speedup,
    )


def _mean(rows: Sequence[Sequence[float]]) -> tuple[float, ...]:
    return tuple(sum(column) / len(rows) for column in zip(*rows, strict=True))


def alike(cluster: Cluster) -> Cluster:
    """``cluster`` with the devices of each pool that have the same threads given their
    mean times (per layer forward, side block and backward, and fixed cost)."""
    groups: dict[tuple[str, int], list[DeviceProfile]] = {}
    for device in cluster.devices:
        if device.cpu_pool:
            groups.setdefault((device.cpu_pool, device.threads), []).append(device)
    mean: dict[str, DeviceProfile] = {}
    for members in groups.values():
        if len(members) < 2 or any(
            [n for n, _ in m.backward_s] != [n for n, _ in members[0].backward_s]
            or len(m.forward_s) != len(members[0].forward_s)
            for m in members
        ):
            continue
        backward = tuple(
            (name, _mean([dict(m.backward_s)[name] for m in members]))
            for name, _ in members[0].backward_s
        )
        for m in members:
            mean[m.name] = replace(
                m,
                forward_s=_mean([x.forward_s for x in members]),
                side_s=_mean([x.side_s for x in members]),
                backward_s=backward,
                gflops=sum(x.gflops for x in members) / len(members),
                micro_batch_overhead_s=sum(x.micro_batch_overhead_s for x in members)
                / len(members),
            )
    if not mean:
        return cluster
    devices = tuple(mean.get(d.name, d) for d in cluster.devices)
    return Cluster(devices, cluster.network)


def shared_pools(cluster: Cluster) -> dict[str, list[DeviceProfile]]:
    """The pools whose devices' threads outnumber their cores, fastest device first."""
    pools: dict[str, list[DeviceProfile]] = {}
    for device in cluster.devices:
        if device.cpu_pool:
            pools.setdefault(device.cpu_pool, []).append(device)
    return {
        pool: sorted(devices, key=lambda d: (sum(d.forward_s) + sum(d.side_s), d.name))
        for pool, devices in pools.items()
        if sum(d.threads for d in devices) > devices[0].pool_cores
    }


def _counts(devices: Sequence[DeviceProfile], every: bool) -> list[int]:
    """How many of a pool's devices to try, most first: every count, or all of them and
    as many as have a core (thread) each."""
    if every:
        return list(range(len(devices), 0, -1))
    fit = max(1, max(k for k in range(len(devices) + 1)
                     if sum(d.threads for d in devices[:k]) <= devices[0].pool_cores))
    return sorted({len(devices), fit}, reverse=True)


def pool_uses(cluster: Cluster) -> list[PoolUse]:
    """Every way to use the cluster's shared pools (see the module's docstring), the one
    that uses every device first, the devices of a pool made :func:`alike`. A cluster
    without a pool of several devices has one: itself."""
    cluster = alike(cluster)
    pools = shared_pools(cluster)
    if not pools:
        return [PoolUse(cluster)]
    every = math.prod(len(devices) for devices in pools.values()) <= MAX_POOL_USES
    uses = []
    for counts in itertools.product(*(_counts(d, every) for d in pools.values())):
        speedups: dict[str, float] = {}
        shares = []
        for (pool, devices), k in zip(pools.items(), counts, strict=True):
            cores = devices[0].pool_cores
            measured = cores_each([d.threads for d in devices], cores)
            now = cores_each([d.threads for d in devices[:k]], cores)
            for device, before, after in zip(devices, measured, now, strict=False):
                speedups[device.name] = after / before
            used = tuple(d.name for d in devices[:k])
            shares.append(PoolShare(pool, cores, used, len(devices), speedups[used[0]]))
        kept = tuple(
            faster(d, speedups[d.name]) if d.name in speedups else d
            for d in cluster.devices
            if d.cpu_pool not in pools or d.name in speedups
        )
        uses.append(PoolUse(Cluster(kept, cluster.network), tuple(shares)))
    return uses
