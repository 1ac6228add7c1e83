"""The cost model, evaluated on real devices (the reference the search must agree with).

Modelling choices (they are also printed in every plan's notes):

- 1F1B pipeline: one iteration takes ``sum_s (t_s + a_s) + (M - 1) * max_s t_s`` where
  ``t_s`` is stage ``s``'s time per micro-batch and ``a_s`` its group all-reduce.
- Inside a group a micro-batch of ``b`` samples is split in whole samples, in proportion to
  speed: the split that minimises the slowest member (each sample goes to the member that
  would finish it first). ``t_s`` is that slowest member's time.
- A device's per-sample cost on a stage is its compute plus its boundary transfers: it
  receives its share's activations and sends back their gradients at the stage's input,
  and sends activations / receives gradients at its output, over its own access link: its
  fastest link in the matrix (in a switched network a pair runs at the slower end's rate,
  and each end is charged at its own rate, so the slower end's stage carries the cost).
  Transfers do not overlap compute. Each message also costs the group's worst access
  latency (a device's least latency in the matrix).
- A micro-batch of ``b`` samples computes and sends ``model.token_scale(b)`` of a sample's
  padded cost (the mesh cuts each micro-batch to its own longest sample; smaller
  micro-batches carry less padding). Memory is counted at the full padding (an upper
  bound).
- Every micro-batch of a stage also costs a fixed time whatever its size (kernel launches,
  dispatch, message handling): the group's largest ``micro_batch_overhead_s``, added to
  ``t_s`` (so it counts ``M`` times per stage and weighs on the bottleneck too). The split
  inside the group ignores it (an upper bound, like the latency).
- The group all-reduces its trainable parameters once per iteration, after gradient
  accumulation (ring: ``2 (n-1)/n * bytes / slowest link + 2 (n-1) * latency``). The groups'
  all-reduces are charged one after another (an upper bound that keeps the objective a sum).
- Links are independent (a switched network), symmetric.
- Memory of a device: its stage's resident weights + gradient and optimizer state of the
  trained parameters + one stash per in-flight micro-batch (stage ``s`` of ``S`` holds
  ``min(M, S - s)`` under 1F1B) times the largest share the device can be given at the
  stage's time. A plan over any device's memory is infeasible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from planner.profiles import Cluster, ModelProfile, Technique

# Floors of ratios of float times: a ratio that is an integer up to rounding counts as one.
EPS = 1e-9

MODEL_NOTES = (
    "1F1B: step = sum(stage + all-reduce) + (M-1) * slowest stage",
    "all-reduce once per iteration after gradient accumulation, groups charged in turn",
    "boundary transfers not overlapped with compute, each end at its own access rate",
    "links independent (switched), symmetric; shares are whole samples",
    "stage time per micro-batch = slowest member's share x its per-sample time + the group's "
    "largest fixed cost per micro-batch (micro_batch_overhead_s; 0 = small micro-batches look "
    "as efficient as large ones) + message latencies",
    "per-sample cost x the model's token scale at the micro-batch's size (micro-batches cut "
    "to their own longest sample pad less)",
)


def makespan(costs: np.ndarray, b: int) -> float:
    """Least time to do ``b`` samples on devices with per-sample ``costs`` ([n] seconds).

    The ``b``-th smallest of the finish times ``{s * costs[d]}``: for each device the least
    ``s`` whose finish time gives enough capacity, by bisection on ``s``.
    """
    best = math.inf
    for d in range(len(costs)):
        lo, hi = 1, b
        while lo < hi:
            mid = (lo + hi) // 2
            capacity = np.floor(mid * costs[d] / costs + EPS).sum()
            if capacity >= b:
                hi = mid
            else:
                lo = mid + 1
        best = min(best, lo * float(costs[d]))
    return best


def split_samples(costs: np.ndarray, b: int, time: float) -> tuple[np.ndarray, np.ndarray]:
    """(capacity, shares) at ``time``: capacity bounds each share; shares sum to ``b``."""
    capacity = np.minimum(np.floor(time / costs + EPS), b).astype(np.int64)
    shares = capacity.copy()
    excess = int(shares.sum()) - b
    # Take the excess from the devices that finish last; the makespan does not grow.
    for d in np.argsort(-(shares * costs), kind="stable"):
        if excess <= 0:
            break
        take = min(excess, int(shares[d]))
        shares[d] -= take
        excess -= take
    return capacity, shares


@dataclass(frozen=True)
class StageCost:
    """A stage on a group: per-micro-batch time, all-reduce, shares and memory."""

    time_s: float
    allreduce_s: float
    shares: tuple[int, ...]
    memory_bytes: tuple[int, ...]
    fits: bool
    worst_device: int  # index into the group of the device with least headroom
    worst_need: int
    worst_have: int


class CostModel:
    """Prefix sums of the per-layer inputs for one cluster, model and technique."""

    def __init__(self, cluster: Cluster, model: ModelProfile, technique: Technique) -> None:
        self.cluster = cluster
        self.model = model
        self.technique = technique
        self.num_layers = len(model.layers)
        self.names = tuple(d.name for d in cluster.devices)
        works = []
        for device in cluster.devices:
            work = device.work_s(technique)
            if len(work) != self.num_layers:
                raise ValueError(
                    f"device {device.name!r} has {len(work)} layer times, the model has "
                    f"{self.num_layers} layers; profile the device for this model"
                )
            if min(work) <= 0:
                raise ValueError(f"device {device.name!r} has a non-positive layer time")
            works.append(work)
        self.work_prefix = _prefix(np.array(works, dtype=np.float64), axis=1)  # [D, L+1]
        self.memory = np.array([d.memory_bytes for d in cluster.devices], dtype=np.float64)
        self.overhead = np.array(
            [d.micro_batch_overhead_s for d in cluster.devices], dtype=np.float64
        )  # [D] seconds per micro-batch and stage
        n = len(cluster.devices)
        self.bandwidth = np.full((n, n), math.inf)
        self.latency = np.zeros((n, n))
        for a in range(n):
            for c in range(n):
                if a != c:
                    link = cluster.network.link(self.names[a], self.names[c])
                    if link.bandwidth_bps <= 0:
                        raise ValueError(f"link {self.names[a]}-{self.names[c]} has no bandwidth")
                    self.bandwidth[a, c] = link.bandwidth_bps
                    self.latency[a, c] = link.latency_s
        # A device's access link: its fastest link (inf for a cluster of one).
        others = ~np.eye(n, dtype=bool)
        self.rate = np.where(others, self.bandwidth, -math.inf).max(axis=1, initial=-math.inf)
        self.rate = np.where(n > 1, self.rate, math.inf)
        self.access_latency = np.where(others, self.latency, math.inf).min(axis=1, initial=math.inf)
        self.access_latency = np.where(n > 1, self.access_latency, 0.0)
        t = technique
        self.resident_prefix = _prefix(np.array(model.resident_bytes(t), dtype=np.float64))
        self.optimizer_prefix = _prefix(np.array(model.optimizer_bytes(t), dtype=np.float64))
        self.stash_prefix = _prefix(np.array(model.stash_bytes(t), dtype=np.float64))
        self.trainable_prefix = _prefix(np.array(model.trainable_bytes(t), dtype=np.float64))
        self.boundary = np.array(model.forward_boundary_bytes(t), dtype=np.float64) + np.array(
            model.backward_boundary_bytes(t), dtype=np.float64
        )

    # --- pieces shared with the vectorised search -------------------------------------

    def comm_bytes(self, i: int, j: int) -> float:
        """Per sample, bytes a device of stage [i, j) moves at its two boundaries."""
        total = 0.0
        if i > 0:
            total += float(self.boundary[i - 1])
        if j < self.num_layers:
            total += float(self.boundary[j - 1])
        return total

    def boundaries(self, i: int, j: int) -> int:
        return int(i > 0) + int(j < self.num_layers)

    def fixed_memory(self, i: int, j: int) -> float:
        return float(
            self.resident_prefix[j] - self.resident_prefix[i]
            + self.optimizer_prefix[j] - self.optimizer_prefix[i]
        )

    def stash(self, i: int, j: int) -> float:
        return float(self.stash_prefix[j] - self.stash_prefix[i])

    def trainable(self, i: int, j: int) -> float:
        return float(self.trainable_prefix[j] - self.trainable_prefix[i])

    # --- the reference evaluation ----------------------------------------------------

    def stage(self, group: tuple[int, ...], i: int, j: int, b: int, inflight: int) -> StageCost:
        """Cost of layers [i, j) on devices ``group`` (indices), micro-batch ``b``."""
        idx = np.array(group)
        whole = i == 0 and j == self.num_layers  # one stage: each device cuts its own rows
        scale = self.model.one_stage_scale(b, len(group)) if whole else self.model.token_scale(b)
        per_sample = scale * (
            self.work_prefix[idx, j] - self.work_prefix[idx, i]
            + self.comm_bytes(i, j) / self.rate[idx]
        )
        compute = makespan(per_sample, b)
        latency = 2 * self.boundaries(i, j) * float(self.access_latency[idx].max())
        overhead = float(self.overhead[idx].max())
        capacity, shares = split_samples(per_sample, b, compute)
        fixed = self.fixed_memory(i, j)
        stash = self.stash(i, j)
        bound = fixed + inflight * capacity * stash
        headroom = self.memory[idx] - bound
        worst = int(np.argmin(headroom))
        memory = tuple(round(float(fixed + inflight * s * stash)) for s in shares)
        return StageCost(
            time_s=compute + latency + overhead,
            allreduce_s=self.allreduce(group, self.trainable(i, j)),
            shares=tuple(int(s) for s in shares),
            memory_bytes=memory,
            fits=bool(headroom.min() >= 0),
            worst_device=worst,
            worst_need=math.ceil(float(bound[worst])),
            worst_have=int(self.memory[idx][worst]),
        )

    def allreduce(self, group: tuple[int, ...], num_bytes: float) -> float:
        """Ring all-reduce of ``num_bytes`` over ``group``: 0 for a group of one."""
        n = len(group)
        if n < 2:
            return 0.0
        idx = np.array(group)
        bandwidth = float(self.bandwidth[np.ix_(idx, idx)].min())
        latency = float(self.latency[np.ix_(idx, idx)].max())
        return 2 * (n - 1) / n * num_bytes / bandwidth + 2 * (n - 1) * latency


@dataclass(frozen=True)
class Layout:
    """A candidate plan before it is a Plan: stages as (device indices, start, end)."""

    stages: tuple[tuple[tuple[int, ...], int, int], ...]
    micro_batches: int


@dataclass(frozen=True)
class LayoutCost:
    step_time_s: float
    stages: tuple[StageCost, ...]
    fits: bool


def evaluate(costs: CostModel, layout: Layout, global_batch: int) -> LayoutCost:
    """The cost model's step time and memory for ``layout``."""
    m = layout.micro_batches
    b = global_batch // m
    count = len(layout.stages)
    evaluated = tuple(
        costs.stage(group, i, j, b, min(m, count - s))
        for s, (group, i, j) in enumerate(layout.stages)
    )
    total = sum(e.time_s + e.allreduce_s for e in evaluated)
    slowest = max(e.time_s for e in evaluated)
    return LayoutCost(
        step_time_s=total + (m - 1) * slowest,
        stages=evaluated,
        fits=all(e.fits for e in evaluated),
    )


def _prefix(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Prefix sums with a leading zero along ``axis``: ``p[j] - p[i]`` sums ``[i, j)``."""
    pad = [(0, 0)] * values.ndim
    pad[axis] = (1, 0)
    return np.pad(np.cumsum(values, axis=axis), pad)
