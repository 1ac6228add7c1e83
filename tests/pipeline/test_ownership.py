"""Cache-phase ownership: every sample one owner, quotas by weight, little moved; and the
bytes it moves are exactly what the planner's redistribution estimate predicts."""

from __future__ import annotations

import random

import pytest

from pac.pipeline.layout import PipelineLayout, StageSpec
from pac.pipeline.ownership import bytes_to_move, epoch_holdings, owners_by_holdings
from pac.pipeline.routing import split_counts
from planner.cache_phase import redistribution
from planner.plan import DeviceGroup, Stage

LAYERS = 6


def two_by_two(micro_batches: int) -> PipelineLayout:
    return PipelineLayout(
        stages=(
            StageSpec(0, 2, ("a", "b"), (3.0, 1.0)),
            StageSpec(2, LAYERS, ("c", "d"), (1.0, 1.0)),
        ),
        micro_batches=micro_batches,
    )


def epoch(samples: int, batch: int, seed: int) -> list[list[str]]:
    order = [f"s{i:03d}" for i in range(samples)]
    random.Random(seed).shuffle(order)
    return [order[i : i + batch] for i in range(0, samples, batch)]


def test_holdings_count_each_sample_layer_exactly_once() -> None:
    layout = two_by_two(2)
    batches = epoch(32, 8, seed=1)
    held = epoch_holdings(layout, batches)
    for fingerprint in (f for group in batches for f in group):
        assert sum(h.get(fingerprint, 0) for h in held.values()) == LAYERS
        # exactly one device of each stage computed it
        assert sum(fingerprint in held[d] for d in ("a", "b")) == 1
        assert sum(fingerprint in held[d] for d in ("c", "d")) == 1
    # a holds 3 of every 4 rows of each micro-batch of stage 0
    assert len(held["a"]) == 24 and len(held["b"]) == 8


@pytest.mark.parametrize("seed", range(5))
def test_owners_take_their_quota_and_move_less_than_a_contiguous_split(seed: int) -> None:
    rng = random.Random(seed)
    layout = two_by_two(rng.choice([1, 2, 4]))
    batches = epoch(64, 8, seed)
    fingerprints = [f for group in batches for f in group]
    weights = [rng.uniform(0.5, 3.0) for _ in layout.devices]
    held = epoch_holdings(layout, batches)
    owners = owners_by_holdings(fingerprints, list(layout.devices), weights, held)
    assert sorted(owners) == sorted(fingerprints)  # every sample, once
    quotas = split_counts(len(fingerprints), weights)
    for device, quota in zip(layout.devices, quotas, strict=True):
        assert sum(owner == device for owner in owners.values()) == quota
    contiguous: dict[str, str] = {}
    start = 0
    for device, quota in zip(layout.devices, quotas, strict=True):
        for fingerprint in sorted(fingerprints)[start : start + quota]:
            contiguous[fingerprint] = device
        start += quota
    assert bytes_to_move(owners, held, LAYERS) < bytes_to_move(contiguous, held, LAYERS)


@pytest.mark.parametrize("micro_batches", [1, 2, 4])
def test_the_planner_predicts_the_bytes_this_assignment_moves(micro_batches: int) -> None:
    layout = two_by_two(micro_batches)
    batch, samples, per_layer = 8, 48, 1000
    batches = epoch(samples, batch, seed=micro_batches)
    fingerprints = [f for group in batches for f in group]
    shares = [("a", 3), ("b", 1), ("c", 2), ("d", 2)]
    held = epoch_holdings(layout, batches)
    owners = owners_by_holdings(
        fingerprints, [d for d, _ in shares], [float(w) for _, w in shares], held
    )
    moved = bytes_to_move(owners, held, LAYERS, {f: per_layer for f in fingerprints})

    micro = batch // micro_batches
    stages = [
        Stage(i, s.begin, s.end, DeviceGroup(s.devices, tuple(split_counts(micro, s.shares))),
              0.0, 0.0)
        for i, s in enumerate(layout.stages)
    ]
    estimate = redistribution(stages, batch, micro_batches, shares, [per_layer] * LAYERS, samples)
    assert moved == estimate.bytes_moved
    assert 0 < moved < samples * LAYERS * per_layer


def test_mismatched_shares_are_refused() -> None:
    with pytest.raises(ValueError, match="2 devices but 1 shares"):
        owners_by_holdings(["x"], ["a", "b"], [1.0], {})
