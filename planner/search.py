"""The exact search: a suffix DP over (devices used per type, first layer, later stages).

``F[u, i, c]`` is the least sum of ``stage time + all-reduce`` over plans of the layers
``[i, L)`` that use exactly ``u`` devices of each type, whose first stage has ``c`` later
stages (``c`` capped at ``C - 1``, see :func:`_stage_tables`), and whose every stage is
faster than a threshold ``t``. A transition adds one stage ``[i, j)`` on a group ``g``
(counts per type) whose memory fits with ``min(M, c + 1)`` micro-batches in flight.

The objective ``sum + (M - 1) * max`` is not a sum, so :func:`search` walks the threshold
down, for each micro-batch count ``M``:

1. the least bottleneck ``X0`` (a min-max DP) and the least sum among plans at ``X0``: a
   strong incumbent at once;
2. a better plan has ``sum >= max >= X0``, so its slowest stage is below
   ``(best - X0) / (M - 1)``; the least-sum DP under that threshold gives ``(S, X)``;
3. every plan left has sum ``>= S`` and slowest stage ``< X``: the next threshold is
   ``min(X, (best - S) / (M - 1))``, and the walk stops once ``S + (M - 1) X0 >= best``.

The first threshold is ``best / M`` from plans already in hand (baselines, and a quick
one-device-per-stage search). Each DP first solves the relaxation that ignores how many
micro-batches are in flight (``C = 1``); only when its optimum does not fit the full DP
runs. The inner step is vectorised over all device counts ``u`` of a level and over a
sliding window of stage lengths ``1..W`` (``W``: the longest stage under the threshold).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np

from planner.costs import EPS, CostModel
from planner.device_types import DeviceTypes

CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class TypeLayout:
    """A plan on types: stages as (counts per type, start, end); ``value`` is the DP's."""

    stages: tuple[tuple[tuple[int, ...], int, int], ...]
    micro_batches: int
    sum_s: float
    slowest_s: float

    @property
    def step_time_s(self) -> float:
        return self.sum_s + (self.micro_batches - 1) * self.slowest_s


class Compositions:
    """Every count vector ``0 <= u <= counts`` and the pairs (u, u - g) by level."""

    def __init__(self, counts: tuple[int, ...], max_group: int | None = None) -> None:
        self.counts = counts
        self.shape = tuple(n + 1 for n in counts)
        self.vectors = np.array(list(itertools.product(*(range(s) for s in self.shape))),
                                dtype=np.int64).reshape(-1, len(counts))
        self.size = len(self.vectors)
        self.level = self.vectors.sum(axis=1)
        # Every nonzero vector is a group (up to ``max_group`` devices: 1 = pure pipeline).
        limit = max_group if max_group is not None else int(self.level.max())
        self.groups = [g for g in range(1, self.size) if self.level[g] <= limit]
        # pairs[(level, g)] = (u indices, v = u - g indices)
        self.pairs: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        strides = np.array([int(np.prod(self.shape[k + 1:])) for k in range(len(counts))])
        for g in self.groups:
            gv = self.vectors[g]
            ok = np.all(self.vectors >= gv, axis=1)
            us = np.nonzero(ok)[0]
            vs = (self.vectors[us] - gv) @ strides
            for level in np.unique(self.level[us]):
                sel = self.level[us] == level
                self.pairs[(int(level), g)] = (us[sel], vs[sel])


@dataclass
class StageTables:
    """For one micro-batch count: per group and layer range, the stage's numbers."""

    time: np.ndarray  # [G, L, L+1] per micro-batch (inf where not a candidate)
    allreduce: np.ndarray  # [G, L, L+1]
    max_inflight: np.ndarray  # [G, L, L+1] most micro-batches in flight that fit (-1: none)
    cap: int  # C - 1: later-stage counts >= cap behave alike


def _stage_tables(
    costs: CostModel,
    types: DeviceTypes,
    comps: Compositions,
    m: int,
    b: int,
    threshold: float,
    exact: bool = True,
) -> StageTables:
    """Price every (group, [i, j)) whose stage time can be below ``threshold``.

    With ``exact=False``, a relaxation that is cheap to build: the split's time is the
    fractional lower bound and memory counts weights only (any DP on it gives lower bounds).
    """
    L = costs.num_layers
    K = len(types)
    first, end = np.triu_indices(L + 1, k=1)  # cells: first < end <= L
    comm_in = np.concatenate([[0.0], costs.boundary[:-1]])  # bytes at input boundary of i
    comm_out = np.concatenate([costs.boundary[:-1], [0.0]])  # at output boundary of j (j<L)
    comm_out = np.concatenate([[0.0], comm_out])  # index by j
    comm = comm_in[first] + comm_out[end]
    nb = (first > 0).astype(np.int64) + (end < L).astype(np.int64)
    work = types.work_prefix[:, end] - types.work_prefix[:, first]
    per_sample = work + comm[None, :] / types.rate[:, None]  # [K, cells], seconds per sample
    fixed = (
        (costs.resident_prefix[end] - costs.resident_prefix[first]) + costs.optimizer_prefix[end]
        - costs.optimizer_prefix[first]
    )
    stash = costs.stash_prefix[end] - costs.stash_prefix[first]
    trainable = costs.trainable_prefix[end] - costs.trainable_prefix[first]

    G = comps.size
    counts = comps.vectors.astype(np.float64)  # [G, K]
    present = comps.vectors > 0
    lat = np.where(present, types.access_latency[None, :], 0.0).max(axis=1)  # [G]
    # Fixed seconds per micro-batch: the group's largest, like the latency.
    overhead = np.where(present, types.overhead[None, :], 0.0).max(axis=1)  # [G]
    size = comps.level
    bw = np.full(G, math.inf)
    pair_lat = np.zeros(G)
    for a in range(K):
        for c in range(K):
            pair = present[:, a] & present[:, c] & ((a != c) | (comps.vectors[:, a] >= 2))
            bw = np.where(pair, np.minimum(bw, types.bandwidth[a, c]), bw)
            pair_lat = np.where(pair, np.maximum(pair_lat, types.latency[a, c]), pair_lat)

    latency = 2 * nb[None, :] * lat[:, None]  # [G, cells]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = b / (counts @ (1.0 / per_sample))  # lower bound of the split's time
        is_group = np.zeros(G, dtype=bool)
        is_group[comps.groups] = True
        # A stage whose weights alone overflow a member can never be used.
        room = np.where(present, types.memory[None, :], math.inf).min(axis=1)  # [G]
        candidate = (
            (frac + latency + overhead[:, None] < threshold)
            & is_group[:, None]
            & (fixed[None, :] <= room[:, None])
        )
    gi, ci = np.nonzero(candidate)

    if not exact:
        # A hair under the fractional bound, so that rounding never lifts it above the truth.
        compute = frac[gi, ci] * (1 - 1e-12)
        max_inflight = np.full(len(gi), m, dtype=np.int64)
    else:
        # Exact whole-sample split by bisection, for each type as the one that finishes last.
        compute = np.full(len(gi), math.inf)
        count = [comps.vectors[gi, k].astype(np.float64) for k in range(K)]  # members per type
        ps = [per_sample[k, ci] for k in range(K)]
        for k in range(K):
            has = count[k] > 0
            lo = np.ones(len(gi), dtype=np.int64)
            hi = np.full(len(gi), b, dtype=np.int64)
            ck = ps[k]
            while b > 1:
                active = lo < hi
                if not active.any():
                    break
                mid = (lo + hi) // 2
                capacity = np.zeros(len(gi))
                for k2 in range(K):
                    capacity += count[k2] * np.floor(mid * ck / ps[k2] + EPS)
                enough = capacity >= b
                hi = np.where(active & enough, mid, hi)
                lo = np.where(active & ~enough, mid + 1, lo)
            compute = np.where(has, np.minimum(compute, lo * ck), compute)

        # The most micro-batches in flight that fit on every member type.
        max_inflight = np.full(len(gi), m, dtype=np.int64)
        fx, st = fixed[ci], stash[ci]
        for k in range(K):
            has = count[k] > 0
            cap_k = np.minimum(np.floor(compute / ps[k] + EPS), b).astype(np.int64)
            mem = types.memory[k]
            load = cap_k * st
            with np.errstate(divide="ignore", invalid="ignore"):
                guess = np.where(load > 0, np.floor((mem - fx) / load), m)
            guess = np.nan_to_num(guess, nan=-1, posinf=m, neginf=-1)
            guess = np.clip(guess, -1, m).astype(np.int64)
            # Settle the float estimate with the reference's own comparison.
            up = (guess < m) & (fx + ((guess + 1) * cap_k) * st <= mem)
            guess = np.where(up, guess + 1, guess)
            down = (guess >= 0) & ~(fx + (guess * cap_k) * st <= mem)
            guess = np.where(down, guess - 1, guess)
            guess = np.where(fx <= mem, np.maximum(guess, 0), -1)
            max_inflight = np.where(has, np.minimum(max_inflight, guess), max_inflight)

    n = size[gi].astype(np.float64)
    ring = np.where(
        n >= 2,
        2 * (n - 1) / np.maximum(n, 1) * trainable[ci] / bw[gi] + 2 * (n - 1) * pair_lat[gi],
        0.0,
    )
    time = np.full((G, L, L + 1), math.inf)
    allreduce = np.zeros((G, L, L + 1))
    inflight = np.full((G, L, L + 1), -1, dtype=np.int64)
    time[gi, first[ci], end[ci]] = compute + latency[gi, ci] + overhead[gi]
    allreduce[gi, first[ci], end[ci]] = ring
    inflight[gi, first[ci], end[ci]] = max_inflight
    binding = max_inflight[(max_inflight >= 1) & (max_inflight < m)]
    cap = int(binding.max()) if len(binding) else 0
    cap = min(cap, m - 1, int(sum(types.counts)) - 1)
    return StageTables(time, allreduce, inflight, cap)


def run_dp(
    comps: Compositions,
    tables: StageTables,
    m: int,
    threshold: float,
    strict: bool = True,
    bottleneck: bool = False,
) -> TypeLayout | None:
    """Least sum over plans whose every stage time is below ``threshold`` (None: none).

    With ``bottleneck`` the DP minimises the slowest stage instead of the sum (min-max).
    """
    L = tables.time.shape[1]
    C = tables.cap + 1
    required = np.minimum(m, np.arange(C) + 1)  # in-flight micro-batches of a stage with c
    under = tables.time < threshold if strict else tables.time <= threshold
    total = tables.time if bottleneck else tables.time + tables.allreduce
    combine = np.maximum if bottleneck else np.add
    F = np.full((comps.size, L + 1, C), math.inf)
    prev = np.full((comps.size, L + 1, C), math.inf)  # what a stage with c continues into
    prev[0, L, 0] = 0.0
    bands: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}
    for g in comps.groups:
        valid = under[g]
        if not valid.any():
            bands[g] = None
            continue
        ii, jj = np.nonzero(valid)
        width = int((jj - ii).max())
        idx = np.arange(L)[:, None] + np.arange(1, width + 1)[None, :]  # [L, W]
        inside = idx <= L
        idx = np.minimum(idx, L)
        cost = np.where(inside & valid[np.arange(L)[:, None], idx],
                        total[g][np.arange(L)[:, None], idx], math.inf)  # [L, W]
        fits = tables.max_inflight[g][np.arange(L)[:, None], idx][..., None] >= required
        bands[g] = (idx, np.where(fits, cost[..., None], math.inf))  # [L, W, C]

    # Per group: the band's costs as [L, C, W], to meet a sliding window over the suffixes.
    windows = {g: np.ascontiguousarray(band[1].transpose(0, 2, 1))
               for g, band in bands.items() if band is not None}
    alive = np.zeros(comps.size, dtype=bool)
    alive[0] = True
    for level in range(1, int(comps.level.max()) + 1):
        for g in comps.groups:
            pair = comps.pairs.get((level, g))
            if g not in windows or pair is None:
                continue
            rows, below = pair
            keep = alive[below]  # suffixes with no plan under the threshold lead nowhere
            if not keep.any():
                continue
            rows, below = rows[keep], below[keep]
            # The later stages use the other level - |g| devices: at most that many stages.
            cl = min(C, level - int(comps.level[g]) + 1)
            cost = windows[g][:, :cl, :]  # [L, cl, W]
            width = cost.shape[2]
            step = max(1, CHUNK_ELEMENTS // cost.size)
            for a in range(0, len(rows), step):
                part = below[a:a + step]
                after = np.full((len(part), L + width, cl), math.inf)
                after[:, :L + 1] = prev[part, :, :cl]
                # window[n, i, c, d - 1] = after[n, i + d, c]: a view, no copy.
                window = np.lib.stride_tricks.sliding_window_view(after[:, 1:], width, axis=1)
                best = combine(window, cost[None]).min(axis=3)  # [n, L, cl]
                # Only values: the one optimal path is found again afterwards (_trace).
                target = rows[a:a + step]
                F[target, :L, :cl] = np.minimum(F[target, :L, :cl], best)
        done = np.nonzero(comps.level == level)[0]
        alive[done] = np.isfinite(F[done]).any(axis=(1, 2))
        if tables.cap == 0:
            prev[done, :L, 0] = F[done, :L, 0]
        else:
            prev[done, :L, 1:C - 1] = F[done, :L, 0:C - 2]
            prev[done, :L, C - 1] = np.minimum(F[done, :L, C - 2], F[done, :L, C - 1])

    start = F[1:, 0, :]
    if not np.isfinite(start).any():
        return None
    flat = int(np.argmin(start))
    u, c = divmod(flat, C)
    u += 1
    stages = []
    i = 0
    slowest = 0.0
    value = 0.0
    while True:
        g, j = _trace(comps, bands, prev, F, u, i, c, combine)
        stages.append((tuple(int(x) for x in comps.vectors[g]), i, j))
        slowest = max(slowest, float(tables.time[g, i, j]))
        value += float(tables.time[g, i, j] + tables.allreduce[g, i, j])
        if j == L:
            break
        rest = comps.vectors[u] - comps.vectors[g]
        u = int(np.ravel_multi_index(tuple(int(x) for x in rest), comps.shape))
        if tables.cap == 0:
            c = 0
        elif c < tables.cap:
            c -= 1
        else:
            c = tables.cap - 1 if F[u, j, tables.cap - 1] <= F[u, j, tables.cap] else tables.cap
        i = j
    return TypeLayout(tuple(stages), m, value, slowest)


class Solver:
    """:func:`run_dp`, first without the later-stage counts when memory could bind.

    The relaxation lets every stage hold one micro-batch in flight; its optimum is a lower
    bound, and when it fits with the real in-flight counts it is the optimum itself. Only
    otherwise the full DP (``C`` times the work) runs; after the relaxation has failed once
    for a table, memory binds there and the full DP is run directly.
    """

    def __init__(self, comps: Compositions, tables: StageTables, m: int) -> None:
        self.comps, self.tables, self.m = comps, tables, m
        self.relax = tables.cap > 0

    def __call__(
        self, threshold: float, strict: bool = True, bottleneck: bool = False
    ) -> TypeLayout | None:
        comps, tables, m = self.comps, self.tables, self.m
        if self.relax:
            relaxed = run_dp(comps, replace(tables, cap=0), m, threshold, strict, bottleneck)
            if relaxed is None:
                return None
            count = len(relaxed.stages)
            if all(
                tables.max_inflight[_index(comps, counts), i, j] >= min(m, count - s)
                for s, (counts, i, j) in enumerate(relaxed.stages)
            ):
                return relaxed
            self.relax = False
        return run_dp(comps, tables, m, threshold, strict, bottleneck)


def _index(comps: Compositions, counts: tuple[int, ...]) -> int:
    return int(np.ravel_multi_index(counts, comps.shape))


def _trace(
    comps: Compositions,
    bands: dict[int, tuple[np.ndarray, np.ndarray] | None],
    prev: np.ndarray,
    F: np.ndarray,
    u: int,
    i: int,
    c: int,
    combine: np.ufunc,
) -> tuple[int, int]:
    """The (group, end) of a first stage that attains ``F[u, i, c]`` (same arithmetic)."""
    target = F[u, i, c]
    closest: tuple[float, int, int] = (math.inf, -1, -1)
    for g in comps.groups:
        band = bands[g]
        rest = comps.vectors[u] - comps.vectors[g]
        if band is None or (rest < 0).any():
            continue
        v = int(np.ravel_multi_index(tuple(int(x) for x in rest), comps.shape))
        idx, cost = band
        values = combine(prev[v, idx[i], c], cost[i, :, c])
        d = int(np.argmin(np.abs(values - target)))
        gap = abs(float(values[d]) - float(target))
        if gap == 0.0:
            return g, int(idx[i, d])
        if gap < closest[0]:
            closest = (gap, g, int(idx[i, d]))
    return closest[1], closest[2]


def search(
    costs: CostModel,
    types: DeviceTypes,
    global_batch: int,
    micro_batch_counts: list[int],
    best_known: float = math.inf,
    max_group: int | None = None,
) -> TypeLayout | None:
    """The plan with the least predicted step time over ``micro_batch_counts`` (exact).

    ``best_known``: the step time of a plan already in hand (e.g. a baseline); only
    strictly better plans are returned, None when there is none. ``max_group`` limits
    the devices per stage (1: one device per stage, the pure pipeline baseline).
    """
    best = best_known
    found: TypeLayout | None = None
    built: dict[int, Compositions] = {}

    def compositions(limit: int) -> Compositions:
        """Groups of at most ``limit`` devices (and ``max_group``), built once per limit."""
        limit = min(limit, max_group or limit, sum(types.counts))
        if limit not in built:
            built[limit] = Compositions(types.counts, limit)
        return built[limit]

    def offer(layout: TypeLayout | None) -> None:
        nonlocal best, found
        if layout is not None and layout.step_time_s < best:
            best, found = layout.step_time_s, layout

    # Many micro-batches first: they tend to win, and a good incumbent prunes the rest.
    ms = sorted(micro_batch_counts, reverse=True)
    if max_group is None and ms[0] > 1 and global_batch // ms[0] > 1:
        # A quick incumbent from the one-device-per-stage search (groups of one: cheap).
        single = compositions(1)
        m, b = ms[0], global_batch // ms[0]
        threshold = best / m if math.isfinite(best) else math.inf
        strict = math.isfinite(threshold)
        solve = Solver(single, _stage_tables(costs, types, single, m, b, threshold), m)
        narrowest = solve(threshold, strict, bottleneck=True)
        if narrowest is not None:
            offer(solve(narrowest.slowest_s, strict=False))
    for m in ms:
        b = global_batch // m
        # A group of more than b devices does no better than its b fastest members alone
        # (same split time, no slower all-reduce or latency, same memory on those members):
        # searching groups of at most b devices loses nothing.
        comps = compositions(b)
        threshold = best / m if math.isfinite(best) else math.inf
        strict = math.isfinite(threshold)
        if strict and b > 1:
            # Lower bounds from cheap tables first: skip m when even they cannot win.
            bound = _stage_tables(costs, types, comps, m, b, threshold, exact=False)
            least = run_dp(comps, bound, m, threshold, strict)
            if least is None:
                continue
            narrow = run_dp(comps, bound, m, threshold, strict, bottleneck=True)
            if narrow is None or least.sum_s + (m - 1) * narrow.slowest_s >= best:
                continue
        solve = Solver(comps, _stage_tables(costs, types, comps, m, b, threshold), m)
        if m == 1:
            offer(solve(threshold, strict))
            continue
        # The least bottleneck X0, then the least sum at X0: a strong incumbent at once.
        narrowest = solve(threshold, strict, bottleneck=True)
        if narrowest is None:
            continue  # nothing under the threshold: no plan with m can win
        floor = narrowest.slowest_s
        offer(solve(floor, strict=False))
        # A better plan has sum >= its max >= X0, so its max is below (best - X0) / (m - 1).
        threshold = min(threshold, (best - floor) / (m - 1))
        layout = solve(threshold)
        # Walk the threshold down; every plan left has sum >= layout.sum_s, max >= floor.
        while layout is not None and layout.sum_s + (m - 1) * floor < best:
            offer(layout)
            threshold = min(layout.slowest_s, (best - layout.sum_s) / (m - 1))
            layout = solve(threshold)
        if layout is not None:
            offer(layout)
    return found
