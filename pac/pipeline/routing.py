"""Which rows of a mini-batch each device handles, and which rows cross between devices.

Rows are contiguous ranges: micro-batch ``m`` is a contiguous slice of the mini-batch, and
inside a stage's group, device ``k`` takes a contiguous slice of each micro-batch sized by
its share (largest-remainder rounding). Two neighbouring stages may split a micro-batch
differently; a device then sends each next-stage device the overlap of their rows.
"""

from __future__ import annotations

from collections.abc import Sequence

Rows = tuple[int, int]  # [start, stop)


def split_counts(total: int, shares: Sequence[float]) -> list[int]:
    """``total`` split proportionally to ``shares`` (largest remainder; sums to total)."""
    weight = sum(shares)
    exact = [total * share / weight for share in shares]
    counts = [int(x) for x in exact]
    order = sorted(range(len(shares)), key=lambda i: (counts[i] - exact[i], i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def contiguous(counts: Sequence[int], start: int = 0) -> list[Rows]:
    rows, position = [], start
    for count in counts:
        rows.append((position, position + count))
        position += count
    return rows


def micro_batch_rows(batch_size: int, micro_batches: int) -> list[Rows]:
    """The mini-batch's rows of each micro-batch (as even as possible). A mini-batch of
    fewer rows than micro-batches (an epoch's short last one) leaves some of them empty:
    every device skips those."""
    if micro_batches < 1:
        raise ValueError(f"a mini-batch needs at least one micro-batch, not {micro_batches}")
    return contiguous(split_counts(batch_size, [1.0] * micro_batches))


def device_rows(micro: Rows, shares: Sequence[float]) -> list[Rows]:
    """Rows of micro-batch ``micro`` for each device of a group (some may be empty)."""
    return contiguous(split_counts(micro[1] - micro[0], shares), start=micro[0])


def overlap(a: Rows, b: Rows) -> Rows | None:
    start, stop = max(a[0], b[0]), min(a[1], b[1])
    return (start, stop) if start < stop else None
