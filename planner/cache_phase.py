"""The cache phase (epochs 2..N): sample shares and the redistribution after epoch 1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from planner.plan import Stage


def proportional_shares(weights: Sequence[float], total: int) -> tuple[int, ...]:
    """Whole shares of ``total`` proportional to ``weights``, by largest remainder.

    The shares sum to ``total`` exactly; ties in the remainder go to the earlier entry.
    """
    w = np.asarray(weights, dtype=np.float64)
    if total < 0 or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"need positive weights and a non-negative total, got {weights}, {total}")
    exact = total * w / w.sum()
    shares = np.floor(exact).astype(np.int64)
    left = total - int(shares.sum())
    order = np.argsort(-(exact - shares), kind="stable")
    shares[order[:left]] += 1
    return tuple(int(s) for s in shares)


def side_speeds(side_s: Sequence[Sequence[float]]) -> list[float]:
    """Samples per second of a whole side network (all layers' side blocks), per device."""
    return [1.0 / float(sum(times)) for times in side_s]


@dataclass(frozen=True)
class Redistribution:
    """Who owns which samples in the cache phase, and the bytes that must move."""

    shares: tuple[tuple[str, int], ...]
    bytes_moved: int
    bytes_received: tuple[tuple[str, int], ...]


def redistribution(
    stages: Sequence[Stage],
    global_batch: int,
    micro_batches: int,
    cache_shares: Sequence[tuple[str, int]],
    cache_bytes_per_layer: Sequence[int],
    samples: int,
) -> Redistribution:
    """Bytes moved so that every device holds all layers' cache for its own samples.

    In epoch 1, sample ``x`` sits at position ``x % global_batch`` of its mini-batch, in
    micro-batch ``pos // b`` at offset ``pos % b``; the member of each stage whose share
    covers that offset computed (and cached) that stage's layers for it. In the cache phase
    a device owns ``share / global_batch`` of the samples (its cache shares scaled, largest
    remainder) and first takes samples it already holds the most layers of; what it holds
    does not move, everything else does. ``cache_bytes_per_layer``: bytes per sample.
    """
    b = global_batch // micro_batches
    per_layer = np.asarray(cache_bytes_per_layer, dtype=np.int64)
    names = [n for n, _ in cache_shares]
    quota = dict(zip(names, proportional_shares([s for _, s in cache_shares], samples),
                     strict=True))
    offset = np.arange(samples) % global_batch % b
    # held[d][x]: cache bytes of sample x that device d computed in epoch 1
    held = {n: np.zeros(samples, dtype=np.int64) for n in names}
    for stage in stages:
        stage_bytes = int(per_layer[stage.start:stage.end].sum())
        start = 0
        for name, share in zip(stage.group.devices, stage.group.shares, strict=True):
            mine = (offset >= start) & (offset < start + share)
            held.setdefault(name, np.zeros(samples, dtype=np.int64))[mine] += stage_bytes
            start += share
    owner = np.full(samples, -1, dtype=np.int64)
    # Devices holding the most bytes per sample choose first.
    order = sorted(range(len(names)), key=lambda k: -int(held[names[k]].max(initial=0)))
    for k in order:
        free = np.nonzero(owner < 0)[0]
        ranked = free[np.argsort(-held[names[k]][free], kind="stable")]
        owner[ranked[:quota[names[k]]]] = k
    total = int(per_layer.sum())
    received = []
    moved = 0
    for k, name in enumerate(names):
        mine = owner == k
        incoming = int(mine.sum()) * total - int(held[name][mine].sum())
        received.append((name, incoming))
        moved += incoming
    return Redistribution(tuple(quota.items()), moved, tuple(received))
