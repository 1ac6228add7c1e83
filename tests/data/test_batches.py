"""batches: a deterministic order per (seed, epoch), every sample once per epoch."""

from __future__ import annotations

import pytest

from pac.data.batches import batches

ITEMS = list(range(23))


def flat(groups: list[list[int]]) -> list[int]:
    return [item for group in groups for item in group]


def test_sizes_and_last_batch_kept() -> None:
    groups = batches(ITEMS, 5, shuffle=True, seed=1, epoch=0)
    assert [len(g) for g in groups] == [5, 5, 5, 5, 3]
    assert sorted(flat(groups)) == ITEMS


def test_same_seed_and_epoch_give_the_same_order() -> None:
    first = batches(ITEMS, 4, shuffle=True, seed=7, epoch=2)
    assert batches(ITEMS, 4, shuffle=True, seed=7, epoch=2) == first
    assert flat(first) != ITEMS


def test_epochs_and_seeds_change_the_order() -> None:
    orders = {tuple(flat(batches(ITEMS, 4, shuffle=True, seed=s, epoch=e)))
              for s in (1, 2) for e in (0, 1, 2)}
    assert len(orders) == 6


def test_without_shuffle_the_order_is_the_data_order() -> None:
    assert batches(ITEMS, 10, shuffle=False, seed=3, epoch=5) == [
        ITEMS[:10], ITEMS[10:20], ITEMS[20:]
    ]


def test_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        batches(ITEMS, 0, shuffle=False, seed=0, epoch=0)
