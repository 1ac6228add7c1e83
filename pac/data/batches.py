"""The order in which samples are trained: deterministic per (seed, epoch)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def batches(
    samples: Sequence[T], batch_size: int, *, shuffle: bool, seed: int, epoch: int
) -> list[list[T]]:
    """Split ``samples`` into batches of ``batch_size`` (the last one may be smaller).

    With ``shuffle`` the order is a permutation drawn from
    ``random.Random(seed * 1000003 + epoch)``: the same (seed, epoch) always gives the same
    batches on every device and every run, and each epoch a different order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = list(range(len(samples)))
    if shuffle:
        random.Random(seed * 1000003 + epoch).shuffle(order)
    return [
        [samples[i] for i in order[start : start + batch_size]]
        for start in range(0, len(order), batch_size)
    ]
