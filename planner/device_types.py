"""Interchangeable devices: types (exact) and, for many distinct devices, classes.

The search works on *counts per type*, which is exact when the devices of a type are
interchangeable: same per-layer times, memory, fixed cost per micro-batch, access link,
and the same links to every other type. Choosing balanced groups among many distinct
devices is 3-PARTITION-hard, so more than ``MAX_TYPES`` types are clustered into classes,
each priced as its slowest, smallest, worst-connected member with the largest fixed cost
per micro-batch (a conservative bound); the plan is then re-priced and its
memory checked on the real devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from planner.costs import CostModel

MAX_TYPES = 4


@dataclass(frozen=True)
class DeviceTypes:
    """``members[k]``: device indices of type k; arrays are indexed by type."""

    members: tuple[tuple[int, ...], ...]
    work_prefix: np.ndarray  # [K, L+1] seconds per sample, prefix over layers
    rate: np.ndarray  # [K] bytes/s of each type's access link
    access_latency: np.ndarray  # [K]
    memory: np.ndarray  # [K] bytes
    overhead: np.ndarray  # [K] seconds per micro-batch and stage (a class: its largest)
    bandwidth: np.ndarray  # [K, K] slowest link between (distinct) members of two types
    latency: np.ndarray  # [K, K]
    clustered: bool

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(len(m) for m in self.members)

    def __len__(self) -> int:
        return len(self.members)


def device_types(costs: CostModel, max_types: int = MAX_TYPES) -> DeviceTypes:
    """Group the cluster's devices into exact types, or into ``max_types`` classes."""
    n = len(costs.names)
    keys: dict[tuple[object, ...], list[int]] = {}
    for d in range(n):
        key = (
            costs.work_prefix[d].tobytes(),
            float(costs.memory[d]),
            float(costs.overhead[d]),
            float(costs.rate[d]),
            float(costs.access_latency[d]),
        )
        keys.setdefault(key, []).append(d)
    members = [tuple(m) for m in keys.values()]
    members = _split_irregular(costs, members)
    clustered = len(members) > max_types
    if clustered:
        members = _cluster(costs, members, max_types)
    return _build(costs, members, clustered)


def _split_irregular(costs: CostModel, members: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Make singletons of types whose links to some type are not all the same."""
    while True:
        irregular: set[int] = set()
        for k, mk in enumerate(members):
            for k2, mk2 in enumerate(members):
                links = {
                    (costs.bandwidth[a, c], costs.latency[a, c])
                    for a in mk for c in mk2 if a != c
                }
                if len(links) > 1:
                    irregular.update((k, k2))
        irregular = {k for k in irregular if len(members[k]) > 1}
        if not irregular:
            return sorted(members, key=lambda m: m[0])
        split = [m for k, m in enumerate(members) if k not in irregular]
        split += [(d,) for k in irregular for d in members[k]]
        members = split


def _cluster(
    costs: CostModel, members: list[tuple[int, ...]], max_types: int
) -> list[tuple[int, ...]]:
    """Cut the types, sorted by speed, into ``max_types`` runs of similar speed and memory."""
    speed = [-math.log(costs.work_prefix[m[0], -1]) for m in members]
    memory = [math.log(max(costs.memory[m[0]], 1.0)) for m in members]
    order = sorted(range(len(members)), key=lambda k: (speed[k], memory[k]))

    def spread(a: int, b: int) -> float:  # order[a:b] as one class
        ks = order[a:b]
        weight = sum(len(members[k]) for k in ks)
        return weight * (
            max(speed[k] for k in ks) - min(speed[k] for k in ks)
            + max(memory[k] for k in ks) - min(memory[k] for k in ks)
        )

    count = len(order)
    best = [[math.inf] * (count + 1) for _ in range(max_types + 1)]
    cut = [[0] * (count + 1) for _ in range(max_types + 1)]
    best[0][0] = 0.0
    for c in range(1, max_types + 1):
        for b in range(1, count + 1):
            for a in range(c - 1, b):
                value = best[c - 1][a] + spread(a, b)
                if value < best[c][b]:
                    best[c][b], cut[c][b] = value, a
    classes = []
    b = count
    for c in range(max_types, 0, -1):
        a = cut[c][b]
        classes.append(tuple(sorted(d for k in order[a:b] for d in members[k])))
        b = a
    return sorted(classes, key=lambda m: m[0])


def _build(costs: CostModel, members: list[tuple[int, ...]], clustered: bool) -> DeviceTypes:
    k = len(members)
    bandwidth = np.full((k, k), math.inf)
    latency = np.zeros((k, k))
    for a, ma in enumerate(members):
        for c, mc in enumerate(members):
            pairs = [(x, y) for x in ma for y in mc if x != y]
            if pairs:
                bandwidth[a, c] = min(costs.bandwidth[x, y] for x, y in pairs)
                latency[a, c] = max(costs.latency[x, y] for x, y in pairs)
    return DeviceTypes(
        members=tuple(members),
        work_prefix=np.stack([_slowest(costs, m) for m in members]),
        rate=np.array([costs.rate[list(m)].min() for m in members]),
        access_latency=np.array([costs.access_latency[list(m)].max() for m in members]),
        memory=np.array([costs.memory[list(m)].min() for m in members]),
        overhead=np.array([costs.overhead[list(m)].max() for m in members]),
        bandwidth=bandwidth,
        latency=latency,
        clustered=clustered,
    )


def _slowest(costs: CostModel, members: tuple[int, ...]) -> np.ndarray:
    """Prefix of the per-layer maximum; a type's own prefix when it has one member kind."""
    prefix = costs.work_prefix[list(members)]
    if all(np.array_equal(prefix[0], p) for p in prefix):
        return np.asarray(prefix[0])
    per_layer = np.diff(prefix, axis=1).max(axis=0)
    return np.concatenate([[0.0], np.cumsum(per_layer)])
