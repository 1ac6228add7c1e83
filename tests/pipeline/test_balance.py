"""Epoch 1 deals each micro-batch's rows to the devices of a one-stage layout so that the
cache phase's steps are even (pac.pipeline.balance), without changing the micro-batches,
their widths or any device's share."""

from __future__ import annotations

import random
import statistics

import pytest
import torch

from pac.data.batches import batches
from pac.pipeline.balance import balanced_slots, slotted_order, step_loads
from pac.pipeline.batch_part import BatchPart, pipeline_parts
from pac.pipeline.layout import PipelineLayout, StageSpec
from pac.pipeline.routing import device_rows, micro_batch_rows

SAMPLES, BATCH, MICRO = 256, 32, 4


def _job(epochs: int) -> tuple[list[list[str]], list[list[list[str]]], dict[str, float]]:
    """Epoch 1's mini-batches (longest first, as epoch 1 computes them), the later epochs'
    mini-batches, and each sample's tokens (sentence-like lengths)."""
    rng = random.Random(7)
    ids = [f"s{i}" for i in range(SAMPLES)]
    tokens = {s: float(rng.randint(4, 60)) for s in ids}
    first = [
        sorted(group, key=lambda s: -tokens[s])
        for group in batches(ids, BATCH, shuffle=True, seed=3, epoch=1)
    ]
    later = [batches(ids, BATCH, shuffle=True, seed=3, epoch=e) for e in range(2, epochs + 1)]
    return first, later, tokens


def _by_position(first: list[list[str]], shares: tuple[float, ...]) -> dict[str, int]:
    """Rows dealt by their place in each micro-batch (what epoch 1 did before)."""
    slots = {}
    for group in first:
        for micro in micro_batch_rows(len(group), MICRO):
            for device, (start, stop) in enumerate(device_rows(micro, shares)):
                for row in range(start, stop):
                    slots[group[row]] = device
    return slots


def _imbalance(
    later: list[list[list[str]]], slots: dict[str, int], tokens: dict[str, float], devices: int
) -> float:
    """The mean over the later steps of the busiest owner's tokens over the mean owner's."""
    owners = {s: str(d) for s, d in slots.items()}
    ratios = []
    for epoch in later:
        for load in step_loads(epoch, owners, tokens):
            work = [load.get(str(d), 0.0) for d in range(devices)]
            ratios.append(max(work) / statistics.mean(work))
    return statistics.mean(ratios)


@pytest.mark.parametrize("epochs", [3, 10])
def test_each_device_keeps_its_share_and_the_later_steps_are_even(epochs: int) -> None:
    first, later, tokens = _job(epochs)
    shares = (1.0, 1.0, 1.0, 1.0)
    slots = balanced_slots(first, MICRO, shares, later, tokens)
    assert set(slots) == {s for group in first for s in group}
    for group in first:  # every micro-batch gives each device exactly its rows
        for micro in micro_batch_rows(len(group), MICRO):
            dealt = [slots[s] for s in group[micro[0] : micro[1]]]
            wanted = [stop - start for start, stop in device_rows(micro, shares)]
            assert [dealt.count(d) for d in range(4)] == wanted
    assert slots == balanced_slots(first, MICRO, shares, later, tokens)  # deterministic
    even = _imbalance(later, slots, tokens, 4)
    dealt_by_position = _imbalance(later, _by_position(first, shares), tokens, 4)
    assert even < 1.25 < 1.35 < dealt_by_position, (even, dealt_by_position)


def _epoch_one_imbalance(
    first: list[list[str]], slots: dict[str, int], tokens: dict[str, float], devices: int
) -> float:
    """Over epoch 1's mini-batches as one micro-batch each, packed (each device computes
    its rows' own tokens): the mean of the busiest device's tokens over the mean's."""
    ratios = []
    for group in first:
        work = [0.0] * devices
        for sample in group:
            work[slots[sample]] += tokens[sample]
        ratios.append(max(work) / statistics.mean(work))
    return statistics.mean(ratios)


@pytest.mark.parametrize("epochs", [3, 10])
def test_packed_rows_even_out_epoch_one_as_well(epochs: int) -> None:
    first, later, tokens = _job(epochs)
    # One micro-batch of 32 rows: nothing is cut, so its rows keep the shuffled order.
    first = [sorted(group) for group in first]
    shares = (8.0, 8.0, 8.0, 8.0)
    cache_only = balanced_slots(first, 1, shares, later, tokens)
    both = balanced_slots(first, 1, shares, later, tokens, epoch_one_weight=2.0)
    for group in first:  # still exactly each device's share
        assert sorted([both[s] for s in group].count(d) for d in range(4)) == [8, 8, 8, 8]
    by_position = _by_position(first, shares)
    assert _epoch_one_imbalance(first, both, tokens, 4) < 1.08
    assert _epoch_one_imbalance(first, cache_only, tokens, 4) > 1.1
    assert _imbalance(later, both, tokens, 4) < 1.25 < _imbalance(later, by_position, tokens, 4)


def test_a_faster_device_gets_work_in_proportion() -> None:
    first, later, tokens = _job(3)
    shares = (2.0, 1.0, 1.0)
    slots = balanced_slots(first, MICRO, shares, later, tokens, speeds=[2.0, 1.0, 1.0])
    owners = {s: str(d) for s, d in slots.items()}
    for epoch in later:
        loads = step_loads(epoch, owners, tokens)
        per_speed = [
            [load.get("0", 0.0) / 2, load.get("1", 0.0), load.get("2", 0.0)] for load in loads
        ]
        assert statistics.mean(max(w) / statistics.mean(w) for w in per_speed) < 1.25
    with pytest.raises(ValueError, match="positive speeds"):
        balanced_slots(first, MICRO, shares, later, tokens, speeds=[1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="positive speeds"):
        balanced_slots(first, MICRO, shares, later, tokens, speeds=[1.0])


def _part() -> BatchPart:
    lengths = [3, 9, 5, 7, 2, 8, 4, 6]
    mask = torch.zeros(8, 9, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    batch = {
        "input_ids": torch.arange(72).view(8, 9) * mask,
        "attention_mask": mask,
        "labels": torch.arange(8),
    }
    return BatchPart.whole(batch, [f"s{i}" for i in range(8)], 8)


def test_slots_reorder_rows_inside_each_micro_batch_only() -> None:
    whole = _part()
    plain = whole.by_micro_batch(2)
    assert plain.sample_ids is not None
    # Reverse the devices' rows in each micro-batch: slot 1 first in the plain order.
    slots = {s: 1 - k // 2 % 2 for k, s in enumerate(plain.sample_ids)}
    slotted = whole.by_micro_batch(2, slots)
    assert slotted.sample_ids is not None
    for start, stop in micro_batch_rows(8, 2):
        assert set(slotted.sample_ids[start:stop]) == set(plain.sample_ids[start:stop])
        dealt = [slots[s] for s in slotted.sample_ids[start:stop]]
        assert dealt == sorted(dealt)
    # Each row keeps its own tensors and its micro-batch's width.
    width = {s: int(plain.columns["attention_mask"][k]) for k, s in enumerate(plain.sample_ids)}
    for k, sample in enumerate(slotted.sample_ids):
        row = int(sample[1:])
        assert torch.equal(slotted.tensors["input_ids"][k], whole.tensors["input_ids"][row])
        assert int(slotted.columns["attention_mask"][k]) == width[sample]
    # On a stage of 2 devices, each is sent exactly the rows of its slot.
    layout = PipelineLayout((StageSpec(0, 2, ("a", "b"), (1.0, 1.0)),), micro_batches=2)
    parts = pipeline_parts(layout, whole, slots)
    for device, slot in (("a", 0), ("b", 1)):
        got = parts[device].sample_ids
        assert got is not None and len(got) == 4 and {slots[s] for s in got} == {slot}
    # One micro-batch (nothing cut): the rows are still dealt by slot.
    single = whole.by_micro_batch(1, {f"s{i}": i % 2 for i in range(8)})
    assert single.sample_ids == tuple(f"s{i}" for i in (0, 2, 4, 6, 1, 3, 5, 7))
    assert whole.by_micro_batch(1) is whole


def test_a_sample_without_a_slot_keeps_its_place_after_the_slotted() -> None:
    ids = ["a", "b", "c", "d"]
    assert slotted_order([0, 1, 2, 3], ids, 1, {"c": 0, "a": 1}) == [2, 0, 1, 3]
    assert slotted_order([3, 2, 1, 0], ids, 2, {"a": 0, "c": 0}) == [2, 3, 0, 1]
