"""Which columns an epoch-1 micro-batch computes: its own longest row's, not the
mini-batch's.

Collate pads a mini-batch on the right to its longest row, and micro-batches were cut from
it in its shuffled order: every micro-batch computed the padding up to the mini-batch's
longest row. On the local mesh's sentences (Rotten Tomatoes, 27.6 tokens on average,
mini-batches of 32) that is about twice the real tokens. Sorted longest first and each
micro-batch cut after the last column one of its rows uses, the backbone computes 1.47x
the real tokens with 2 micro-batches, 1.20x with 4 and 1.08x with 8.

Why the cut changes nothing but rounding: masks are right-padded, so a column past the
last real token of every row of the micro-batch is a key that no real query attends to
(it is masked for a bidirectional stack, and later than every real token for a causal
one), and its position comes after every real one (absolute or rotary positions start at
the first column either way). Heads read real positions only: pooling follows the mask,
and per-token labels are ignored (-100) on padding. A column where some row's label is
not ignored is kept, as a mask whose keys do not all have its width is not cut at all.
The loss is a sum over rows, so the rows' order changes only the order of the summation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from pac.data.encoding import IGNORE_INDEX
from pac.pipeline.routing import Rows, micro_batch_rows

Tensors = dict[str, torch.Tensor]

MASKS = ("attention_mask", "decoder_attention_mask")


def follows(key: str, batch: Mapping[str, torch.Tensor]) -> str | None:
    """The mask whose columns ``batch[key]``'s columns are (None: it has no columns):
    ``decoder_*`` keys the decoder's, per-token labels the decoder's when there is one
    (seq2seq) else the input's (causal-lm), other ``[rows, seq]`` keys the input's."""
    if batch[key].dim() < 2:
        return None
    if key.startswith("decoder_"):
        return "decoder_attention_mask"
    if key == "labels" and "decoder_attention_mask" in batch:
        return "decoder_attention_mask"
    return "attention_mask"


def _last_used(used: torch.Tensor) -> torch.Tensor:
    """``used`` ``[rows, seq]`` bool -> ``[rows]`` int64: one past each row's last true
    column (0 when none)."""
    columns = torch.arange(1, used.shape[1] + 1, dtype=torch.int64)
    return (used.to(torch.int64) * columns).amax(dim=1)


def used_columns(batch: Mapping[str, torch.Tensor]) -> Tensors:
    """Per mask of ``batch`` whose columns can be cut, ``[rows]`` int64: how many leading
    columns each row uses (its mask's last real token, or a later label not ignored)."""
    used: Tensors = {}
    for mask in MASKS:
        if mask not in batch or batch[mask].dim() != 2:
            continue
        width = batch[mask].shape[1]
        keys = [key for key in batch if follows(key, batch) == mask]
        if any(batch[key].shape[1] != width for key in keys):
            continue  # columns that are not the mask's: leave them all
        columns = _last_used(batch[mask] != 0)
        if "labels" in keys:
            columns = torch.maximum(columns, _last_used(batch["labels"] != IGNORE_INDEX))
        used[mask] = columns
    return used


def longest_first(used: Mapping[str, torch.Tensor], rows: int) -> list[int]:
    """The rows ordered by the columns they use over all masks, most first (ties: in
    order)."""
    total = sum((columns for columns in used.values()), torch.zeros(rows, dtype=torch.int64))
    return sorted(range(rows), key=lambda row: (-int(total[row]), row))


def micro_batch_columns(used: Mapping[str, torch.Tensor], micro: Sequence[Rows]) -> Tensors:
    """Per mask, ``[rows]``: the columns each row's micro-batch computes (the most any of
    its rows uses, at least 1)."""
    widths: Tensors = {}
    for mask, columns in used.items():
        width = torch.zeros_like(columns)
        for start, stop in micro:
            if start < stop:
                width[start:stop] = max(1, int(columns[start:stop].max()))
        widths[mask] = width
    return widths


def cut_columns(batch: Mapping[str, torch.Tensor], widths: Mapping[str, int]) -> Tensors:
    """``batch`` with every key that follows a mask of ``widths`` cut to that many
    columns."""
    cut: Tensors = {}
    for key, value in batch.items():
        mask = follows(key, batch)
        cut[key] = value[:, : widths[mask]] if mask is not None and mask in widths else value
    return cut


def micro_batch_cut(
    batch: Mapping[str, torch.Tensor], micro_batches: int
) -> tuple[list[int], Tensors] | None:
    """How epoch 1 computes ``batch`` in ``micro_batches``: its rows' order (longest
    first) and, per mask, ``[rows]`` in that order, the columns each row's micro-batch
    computes. None where nothing is cut (one micro-batch, no mask that can be cut)."""
    rows = next(iter(batch.values())).shape[0] if batch else 0
    used = used_columns(batch) if micro_batches > 1 else {}
    if not used or not rows:
        return None
    order = longest_first(used, rows)
    index = torch.tensor(order, dtype=torch.long)
    micro = micro_batch_rows(rows, micro_batches)
    return order, micro_batch_columns({m: u.index_select(0, index) for m, u in used.items()}, micro)


def token_scale(batches: Iterable[Mapping[str, torch.Tensor]], micro_batches: int) -> float:
    """The tokens epoch 1 computes over ``batches`` cut into ``micro_batches`` each
    (:func:`micro_batch_cut`), over the tokens of the batches as padded (1.0 where nothing
    is cut). What the planner's cost model scales a micro-batch's per-sample cost by: a
    micro-batch computed at its own longest row is a one-stage group of one device."""
    return one_stage_token_scale(batches, micro_batches, 1) if micro_batches > 1 else 1.0


def one_stage_token_scale(
    batches: Iterable[Mapping[str, torch.Tensor]],
    micro_batches: int,
    devices: int,
    packed: bool = False,
) -> float:
    """The tokens epoch 1 computes over ``batches`` in a one-stage group of ``devices``
    devices, each cutting its rows of a micro-batch to their own longest
    (:meth:`pac.pipeline.batch_part.BatchPart.rows`), over the tokens of the batches as
    padded. The rows of a micro-batch (longest first) are taken to be dealt in turn, one
    to each device, as the deal for even cached steps (:mod:`pac.pipeline.balance`)
    starts: each device's longest row is then one of the micro-batch's ``devices``
    longest. ``packed``: the devices pack their rows (:mod:`pac.families.row_packing`)
    and compute each row's own columns only, however the rows are dealt."""
    computed = padded = 0
    for batch in batches:
        rows = next(iter(batch.values())).shape[0] if batch else 0
        used = used_columns(batch)
        cut = micro_batch_cut(batch, micro_batches)
        order = cut[0] if cut is not None else list(range(rows))
        spans = micro_batch_rows(rows, micro_batches) if cut is not None else [(0, rows)]
        for mask in MASKS:
            if mask not in batch or batch[mask].dim() != 2:
                continue
            padded += batch[mask].numel()
            if mask not in used:
                computed += batch[mask].numel()
                continue
            for start, stop in spans:
                members = order[start:stop]
                for k in range(max(1, devices)):
                    mine = members[k :: max(1, devices)]
                    if mine and packed:
                        computed += int(used[mask][mine].clamp(min=1).sum())
                    elif mine:
                        computed += len(mine) * max(1, int(used[mask][mine].max()))
    return computed / padded if padded else 1.0
