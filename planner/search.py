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

What keeps it fast, none of it changing the optimum:

- only the states that can lie on a whole plan are computed: the first stage of
  ``(u, i)`` starts where ``u`` can still cover ``[i, L)`` and the other devices
  ``[0, i)`` (each stage holds at most its group's widest valid stage), and it ends where
  the rest ``u - g`` has a plan;
- with several ``M`` to choose from, an ``M`` is skipped when lower bounds from cheap
  tables (fractional split, weights only) cannot beat the best plan in hand;
- ``X0`` is searched under the slowest stage of a plan in hand with the same ``M``, and the
  walk starts below ``(best - max(X0, least relaxed sum)) / (M - 1)``;
- from the walk's second step, a state whose sum plus a lower bound of the layers before
  it (the same DP on the reversed layers, :func:`prefix_bound`) cannot go below
  ``best - (M - 1) X0`` is dropped.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import numpy as np

from planner.costs import EPS, CostModel
from planner.device_types import DeviceTypes

CHUNK_ELEMENTS = 1 << 22
BAND_ROWS = 64  # rows per chunk at least, when bands make chunks narrow


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
        # The same pairs, all groups of a level together: (u, v, g) indices.
        self.by_level: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for level in range(1, int(self.level.max()) + 1):
            keys = [key for key in self.pairs if key[0] == level]
            if keys:
                self.by_level[level] = (
                    np.concatenate([self.pairs[k][0] for k in keys]),
                    np.concatenate([self.pairs[k][1] for k in keys]),
                    np.concatenate([np.full(len(self.pairs[k][0]), k[1]) for k in keys]),
                )

    def reach(self, widths: np.ndarray) -> np.ndarray:
        """[size] most layers a chain of stages can cover with the devices of each vector.

        ``widths[g]``: the most layers one stage on group ``g`` can hold (0: none).
        """
        reach = np.zeros(self.size, dtype=np.int64)
        for level in range(1, int(self.level.max()) + 1):
            if level not in self.by_level:
                continue
            us, vs, gs = self.by_level[level]
            np.maximum.at(reach, us, widths[gs] + reach[vs])
        return reach

    def complement(self, u: np.ndarray) -> np.ndarray:
        """Indices of ``counts - vectors[u]`` (product order makes it ``size - 1 - u``)."""
        return self.size - 1 - u


@dataclass
class StageTables:
    """For one micro-batch count: per group and layer range, the stage's numbers."""

    time: np.ndarray  # [groups, L, L+1] per micro-batch (inf where not a candidate)
    allreduce: np.ndarray  # [groups, L, L+1]
    max_inflight: np.ndarray  # [groups, L, L+1] most micro-batches in flight that fit (-1: none)
    cap: int  # C - 1: later-stage counts >= cap behave alike
    slot: np.ndarray  # [G] each composition's row in the arrays (-1: not a group)

    def row(self, g: int) -> int:
        """The arrays' row of composition ``g`` (a group)."""
        return int(self.slot[g])


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
    # [K, cells], seconds per sample at this micro-batch size's padding
    per_sample = costs.model.token_scale(b) * (work + comm[None, :] / types.rate[:, None])
    fixed = (
        (costs.resident_prefix[end] - costs.resident_prefix[first]) + costs.optimizer_prefix[end]
        - costs.optimizer_prefix[first]
    )
    stash = costs.stash_prefix[end] - costs.stash_prefix[first]
    trainable = costs.trainable_prefix[end] - costs.trainable_prefix[first]

    G = comps.size
    # Only the groups are priced (rows of ``vectors``: the group's counts per type).
    group_rows = np.array(comps.groups, dtype=np.int64)
    vectors = comps.vectors[group_rows]
    counts = vectors.astype(np.float64)  # [groups, K]
    present = vectors > 0
    lat = np.where(present, types.access_latency[None, :], 0.0).max(axis=1)  # [G]
    # Fixed seconds per micro-batch: the group's largest, like the latency.
    overhead = np.where(present, types.overhead[None, :], 0.0).max(axis=1)  # [G]
    size = comps.level[group_rows]
    bw = np.full(len(group_rows), math.inf)
    pair_lat = np.zeros(len(group_rows))
    for a in range(K):
        for c in range(K):
            pair = present[:, a] & present[:, c] & ((a != c) | (vectors[:, a] >= 2))
            bw = np.where(pair, np.minimum(bw, types.bandwidth[a, c]), bw)
            pair_lat = np.where(pair, np.maximum(pair_lat, types.latency[a, c]), pair_lat)

    latency = 2 * nb[None, :] * lat[:, None]  # [G, cells]
    # A stage of every layer: each device cuts its rows to their own longest, so the group's
    # size changes what a sample computes (ModelProfile.one_stage_tokens); the same factor
    # for every member leaves the split as it is and scales its time.
    whole = np.nonzero((first == 0) & (end == L))[0]
    base = costs.model.token_scale(b)
    one_stage = np.array(
        [costs.model.one_stage_scale(b, int(n)) / base for n in size], dtype=np.float64
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = b / (counts @ (1.0 / per_sample))  # lower bound of the split's time
        frac[:, whole] *= one_stage[:, None]
        # A stage whose weights alone overflow a member can never be used.
        room = np.where(present, types.memory[None, :], math.inf).min(axis=1)  # [groups]
        candidate = (
            (frac + latency + overhead[:, None] < threshold) & (fixed[None, :] <= room[:, None])
        )
    gi, ci = np.nonzero(candidate)

    if not exact:
        # A hair under the fractional bound, so that rounding never lifts it above the truth.
        compute = frac[gi, ci] * (1 - 1e-12)
        max_inflight = np.full(len(gi), m, dtype=np.int64)
    else:
        # Exact whole-sample split by bisection, for each type as the one that finishes last.
        compute = np.full(len(gi), math.inf)
        count = [counts[gi, k] for k in range(K)]  # members per type
        ps = [per_sample[k, ci] for k in range(K)]
        for k in range(K):
            sel = np.nonzero(count[k] > 0)[0]  # the groups with a member of type k
            lo = np.ones(len(sel), dtype=np.int64)
            hi = np.full(len(sel), b, dtype=np.int64)
            ck = ps[k][sel]
            others = [(count[k2][sel], ps[k2][sel]) for k2 in range(K)]
            while b > 1:
                active = lo < hi
                if not active.any():
                    break
                mid = (lo + hi) // 2
                capacity = np.zeros(len(sel))
                for n_k2, ps_k2 in others:
                    capacity += n_k2 * np.floor(mid * ck / ps_k2 + EPS)
                enough = capacity >= b
                hi = np.where(active & enough, mid, hi)
                lo = np.where(active & ~enough, mid + 1, lo)
            compute[sel] = np.minimum(compute[sel], lo * ck)

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

        compute = np.where(ci == whole[0], compute * one_stage[gi], compute)

    n = size[gi].astype(np.float64)
    ring = np.where(
        n >= 2,
        2 * (n - 1) / np.maximum(n, 1) * trainable[ci] / bw[gi] + 2 * (n - 1) * pair_lat[gi],
        0.0,
    )
    R = len(group_rows)
    time = np.full((R, L, L + 1), math.inf)
    allreduce = np.zeros((R, L, L + 1))
    inflight = np.full((R, L, L + 1), -1, dtype=np.int64)
    time[gi, first[ci], end[ci]] = compute + latency[gi, ci] + overhead[gi]
    allreduce[gi, first[ci], end[ci]] = ring
    inflight[gi, first[ci], end[ci]] = max_inflight
    slot = np.full(G, -1, dtype=np.int64)
    slot[group_rows] = np.arange(R)
    binding = max_inflight[(max_inflight >= 1) & (max_inflight < m)]
    cap = int(binding.max()) if len(binding) else 0
    cap = min(cap, m - 1, int(sum(types.counts)) - 1)
    return StageTables(time, allreduce, inflight, cap, slot)


@dataclass(frozen=True)
class Prune:
    """Drop a state (u, i) of a least-sum DP when no whole plan through it can sum below
    ``limit``: ``prefix[w, i]`` bounds from below the sum of any stages that cover layers
    ``[0, i)`` with at most the devices ``w`` (see :func:`prefix_bound`)."""

    prefix: np.ndarray  # [size, L+1]
    limit: float


def run_dp(
    comps: Compositions,
    tables: StageTables,
    m: int,
    threshold: float,
    strict: bool = True,
    bottleneck: bool = False,
    prune: Prune | None = None,
) -> TypeLayout | None:
    """Least sum over plans whose every stage time is below ``threshold`` (None: none).

    With ``bottleneck`` the DP minimises the slowest stage instead of the sum (min-max).
    With ``prune`` only plans whose sum is below ``prune.limit`` are looked at (None when
    there is none).
    """
    F, prev, bands, combine = _fill(comps, tables, m, threshold, strict, bottleneck, prune)
    return _best_plan(comps, tables, m, F, prev, bands, combine)


def prefix_bound(
    comps: Compositions, tables: StageTables, m: int, threshold: float, strict: bool = True
) -> np.ndarray:
    """[size, L+1]: a lower bound of the sum of stages covering ``[0, i)`` under the
    threshold with at most the devices of each vector.

    The same DP on the layers reversed, with one micro-batch in flight everywhere (less
    memory than any real stage needs: a relaxation), then a least over sub-vectors.
    """
    L = tables.time.shape[1]
    rows = L - np.arange(L + 1)[None, :]  # [i', j'] -> start L - j'
    cols = L - np.arange(L)[:, None]  # [i', j'] -> end L - i'

    def flip(x: np.ndarray, fill: float) -> np.ndarray:
        pad = np.concatenate([x, np.full((x.shape[0], 1, L + 1), fill, dtype=x.dtype)], axis=1)
        return pad[:, rows, cols]  # stage [i', j') of the reversed model = [L - j', L - i')

    reverse = StageTables(flip(tables.time, math.inf), flip(tables.allreduce, 0.0),
                          flip(tables.max_inflight, -1), cap=0, slot=tables.slot)
    F = _fill(comps, reverse, m, threshold, strict, False, None)[0]
    exact = F[:, ::-1, 0].copy()  # exact[u, i]: layers [0, i) on exactly u
    exact[0, 0] = 0.0
    lattice = exact.reshape((*comps.shape, L + 1))
    for axis in range(len(comps.shape)):
        lattice = np.minimum.accumulate(lattice, axis=axis)
    return lattice.reshape(comps.size, L + 1)


def _fill(
    comps: Compositions,
    tables: StageTables,
    m: int,
    threshold: float,
    strict: bool,
    bottleneck: bool,
    prune: Prune | None,
) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[np.ndarray, np.ndarray] | None], np.ufunc]:
    """The DP's tables ``F`` and ``prev`` (see the module docstring) and its stage bands."""
    L = tables.time.shape[1]
    C = tables.cap + 1
    required = np.minimum(m, np.arange(C) + 1)  # in-flight micro-batches of a stage with c
    combine = np.maximum if bottleneck else np.add
    F = np.full((comps.size, L + 1, C), math.inf)
    # What a stage with c continues into; padded with inf past layer L for the windows.
    prev = np.full((comps.size, 2 * L + 1, C), math.inf)
    prev[0, L, 0] = 0.0
    bands: dict[int, tuple[np.ndarray, np.ndarray] | None] = {}
    for g in comps.groups:
        r = tables.row(g)
        time = tables.time[r]
        valid = time < threshold if strict else time <= threshold
        if not valid.any():
            bands[g] = None
            continue
        total = time if bottleneck else time + tables.allreduce[r]
        ii, jj = np.nonzero(valid)
        width = int((jj - ii).max())
        idx = np.arange(L)[:, None] + np.arange(1, width + 1)[None, :]  # [L, W]
        inside = idx <= L
        idx = np.minimum(idx, L)
        cost = np.where(inside & valid[np.arange(L)[:, None], idx],
                        total[np.arange(L)[:, None], idx], math.inf)  # [L, W]
        fits = tables.max_inflight[r][np.arange(L)[:, None], idx][..., None] >= required
        bands[g] = (idx, np.where(fits, cost[..., None], math.inf))  # [L, W, C]

    # Per group: the band's costs as [W, L, C], to meet a sliding window over the suffixes
    # (the stage width first: the least over it is then a run of elementwise minima).
    windows = {g: np.ascontiguousarray(band[1].transpose(1, 0, 2))
               for g, band in bands.items() if band is not None}
    # A state (u, i) lies on a whole plan only if u's devices can cover [i, L) and the
    # others [0, i): each stage holds at most its group's widest valid stage, so the first
    # stage of (u, i) starts in [L - reach(u), reach(rest)]. Nothing outside is computed.
    widths = np.zeros(comps.size, dtype=np.int64)
    # longest[g][i]: the widest valid stage on g from layer i (0: none).
    longest: dict[int, np.ndarray] = {}
    for g, window in windows.items():
        widths[g] = window.shape[0]
        finite = np.isfinite(window[:, :, 0].T)  # [L, W]; c = 0 needs the least memory
        longest[g] = np.where(finite.any(axis=1),
                              window.shape[0] - np.argmax(finite[:, ::-1], axis=1), 0)
    reach = comps.reach(widths)
    lowest = np.maximum(L - reach, 0)
    highest = np.minimum(reach[comps.complement(np.arange(comps.size))], L - 1)
    sizes = comps.level.tolist()
    # first[v], last[v]: the first and last layer from which v has a plan of the rest.
    first = np.full(comps.size, L + 1, dtype=np.int64)
    last = np.full(comps.size, -1, dtype=np.int64)
    first[0] = last[0] = L
    for level in range(1, int(comps.level.max()) + 1):
        for g, cost_g in windows.items():
            pair = comps.pairs.get((level, g))
            if pair is None:
                continue
            rows, below = pair
            # The first stage [i, j) needs a plan of [j, L) on v = u - g: first[v] <= j <=
            # last[v] (v without any plan has first > last: the row drops out).
            lo = np.maximum(lowest[rows], first[below] - widths[g])
            hi = np.minimum(highest[rows], last[below] - 1)
            keep = lo <= hi
            if not keep.all():
                if not keep.any():
                    continue
                rows, below, lo, hi = rows[keep], below[keep], lo[keep], hi[keep]
            # The later stages use the other level - |g| devices: at most that many stages.
            cl = min(C, level - sizes[g] + 1)
            cost = cost_g[:, :, :cl]  # [W, L, cl]
            step = max(BAND_ROWS, CHUNK_ELEMENTS // cost.size)
            if len(rows) > step:
                # Rows with nearby bands together, so that each chunk's union band is narrow.
                order = np.argsort(lo, kind="stable")
                rows, below, lo, hi = rows[order], below[order], lo[order], hi[order]
            for a in range(0, len(rows), step):
                part = below[a:a + step]
                i0, i1 = int(lo[a:a + step].min()), int(hi[a:a + step].max()) + 1
                # Stage widths d in [d0, d1]: no wider than valid from i0..i1-1, and
                # reaching at least the first layer any of these rows has a plan from.
                d1 = int(longest[g][i0:i1].max())
                d0 = max(1, int(first[part].min()) - (i1 - 1))
                if d1 < d0:
                    continue
                span, width = i1 - i0, d1 - d0 + 1
                # prev is padded with inf past layer L: no bounds to mind.
                after = prev[part, i0 + d0:i1 + d1, :cl]  # [n, span + width - 1, cl]
                # window[e, n, i - i0, c] = after[n, i - i0 + e, c] = prev[., i + d0 + e, c]
                n0, n1, n2 = after.strides
                window = np.lib.stride_tricks.as_strided(
                    after, (width, len(part), span, cl), (n1, n0, n1, n2), writeable=False
                )
                best = combine(window, cost[d0 - 1:d1, None, i0:i1]).min(axis=0)
                # Only values: the one optimal path is found again afterwards (_trace).
                target = rows[a:a + step]
                F[target, i0:i1, :cl] = np.minimum(F[target, i0:i1, :cl], best)
        done = np.nonzero(comps.level == level)[0]
        if prune is not None:
            # The cheapest whole plan through (u, i) sums to at least F + prefix(rest, i).
            lower = prune.prefix[comps.complement(done)][..., None]  # [n, L+1, 1]
            F[done] = np.where(F[done] + lower >= prune.limit, math.inf, F[done])
        reached = np.asarray(np.isfinite(F[done]).any(axis=2))  # [n, L + 1]
        alive = reached.any(axis=1)
        first[done] = np.where(alive, np.argmax(reached, axis=1), L + 1)
        last[done] = np.where(alive, L - np.argmax(reached[:, ::-1], axis=1), -1)
        if tables.cap == 0:
            prev[done, :L, 0] = F[done, :L, 0]
        else:
            prev[done, :L, 1:C - 1] = F[done, :L, 0:C - 2]
            prev[done, :L, C - 1] = np.minimum(F[done, :L, C - 2], F[done, :L, C - 1])
    return F, prev, bands, combine


def _best_plan(
    comps: Compositions,
    tables: StageTables,
    m: int,
    F: np.ndarray,
    prev: np.ndarray,
    bands: dict[int, tuple[np.ndarray, np.ndarray] | None],
    combine: np.ufunc,
) -> TypeLayout | None:
    """The plan of least ``F`` from layer 0, traced stage by stage (None: none)."""
    L = tables.time.shape[1]
    C = tables.cap + 1
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
        r = tables.row(g)
        slowest = max(slowest, float(tables.time[r, i, j]))
        value += float(tables.time[r, i, j] + tables.allreduce[r, i, j])
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
        self,
        threshold: float,
        strict: bool = True,
        bottleneck: bool = False,
        prune: Prune | None = None,
    ) -> TypeLayout | None:
        comps, tables, m = self.comps, self.tables, self.m
        if self.relax:
            relaxed = run_dp(comps, replace(tables, cap=0), m, threshold, strict, bottleneck,
                             prune)
            if relaxed is None:
                return None
            count = len(relaxed.stages)
            if all(
                tables.max_inflight[tables.row(_index(comps, counts)), i, j]
                >= min(m, count - s)
                for s, (counts, i, j) in enumerate(relaxed.stages)
            ):
                return relaxed
            self.relax = False
        return run_dp(comps, tables, m, threshold, strict, bottleneck, prune)


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
        least_sum = 0.0  # a lower bound of the sum of any plan under the threshold
        if strict and b > 1 and len(ms) > 1:
            # Lower bounds from cheap tables first: skip m when even they cannot win (with
            # one m to try, the exact tables are built anyway: no need).
            bound = _stage_tables(costs, types, comps, m, b, threshold, exact=False)
            least = run_dp(comps, bound, m, threshold, strict)
            if least is None:
                continue
            least_sum = least.sum_s
            if least_sum >= best:
                continue
            if m > 1:
                # A better plan has max < (best - least sum) / (m - 1): is there any?
                narrow = run_dp(comps, bound, m, min(threshold, (best - least_sum) / (m - 1)),
                                strict, bottleneck=True)
                if narrow is None:
                    continue
        solve = Solver(comps, _stage_tables(costs, types, comps, m, b, threshold), m)
        if m == 1:
            offer(solve(threshold, strict))
            continue
        # The least bottleneck X0, then the least sum at X0: a strong incumbent at once.
        # A plan in hand with m bounds X0 from above: the narrower DP finds the same X0.
        narrowest = None
        if found is not None and found.micro_batches == m and found.slowest_s < threshold:
            narrowest = solve(found.slowest_s, strict=False, bottleneck=True)
        if narrowest is None:
            narrowest = solve(threshold, strict, bottleneck=True)
        if narrowest is None:
            continue  # nothing under the threshold: no plan with m can win
        floor = narrowest.slowest_s
        offer(solve(floor, strict=False))
        # A better plan has sum >= its max >= X0 and sum >= the bound's least sum, so its
        # max is below (best - max(X0, least sum)) / (m - 1).
        threshold = min(threshold, (best - max(floor, least_sum)) / (m - 1))
        layout = solve(threshold)
        prefix: np.ndarray | None = None
        # Walk the threshold down; every plan left has sum >= layout.sum_s, max >= floor.
        while layout is not None and layout.sum_s + (m - 1) * floor < best:
            offer(layout)
            threshold = min(layout.slowest_s, (best - layout.sum_s) / (m - 1))
            if prefix is None:
                # A long walk: bound the layers before each state once (a DP's work), so
                # that states through which no plan sums below best - (m - 1) X0 drop out.
                prefix = prefix_bound(comps, solve.tables, m, threshold)
            layout = solve(threshold, prune=Prune(prefix, best - (m - 1) * floor))
        if layout is not None:
            offer(layout)
    return found
