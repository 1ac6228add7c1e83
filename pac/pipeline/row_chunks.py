"""Which rows a cache-phase step computes together, and at what length.

A device computes its rows of a mini-batch in chunks of about ``chunk_bytes`` of ladder
points, as read from the cache, accumulating the gradients: its peak memory holds one
chunk's points and activations, not its whole share's (the same sum, in another order).

The mini-batch arrives padded to its longest sample, but the cache holds each sample's
points unpadded. So where a sample's loss does not read its padding (one label per sample:
classification, regression) the rows are taken longest first, and each chunk is computed
at its own longest row: its padding columns, which every mask hides, are cut off. On the
local mesh's sentences (27.6 tokens on average, mini-batches padded to 55) this computes
about half the columns. Where the labels are per token, the rows keep the mini-batch's
length and their order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from pac.engine.ladder_cache import LadderCache

Tensors = dict[str, torch.Tensor]

# Ladder points per chunk of rows, in the dtype they are read in (the cache's exact dtype:
# fp16 for the default fp16 cache). A chunk's peak (its points, the side network's
# activations, their gradients) is a few times this. On the BERT-base shape (13 points of
# 768 values, 20 KB a token in fp16) 3 MiB computes about 160 tokens at a time. On the local
# mesh (bench/e2e.py --backbone bert-base --epochs 10 --cache-chunk-mib N, one run each) the
# cache phase's peak above the idle agent was 148, 154, 166 and 171 MB with chunks of 2, 3,
# 4 and 5 MiB, and a cached step's compute 134, 122, 122 and 124 ms: below 3 MiB the chunks'
# fixed costs show. MiniLM's share of a mini-batch of 32 fits in one chunk or two.
DEFAULT_CHUNK_BYTES = 3 << 20
# ... and at least this many tokens of every ladder point: on a wide model 3 MiB holds few
# (BERT-large's 26 points of 1024 values: 59 tokens, about 2 sentences), and the side
# network's small matrices then cost more than their work. On the local mesh (bench/e2e.py
# --backbone bert-large --agent-cpu-quota 0.5, PAC only, one run each) a cached step's compute
# was 2127 ms with chunks of 3 MiB and 1682 ms with 6 MiB (118 tokens); the cache phase's
# peak 530 and 540 MB. On BERT-base and MiniLM 3 MiB holds more than this already.
MIN_CHUNK_TOKENS = 120


def default_chunk_bytes(cache: LadderCache, width: int) -> int:
    """A chunk when the job sets none: :data:`DEFAULT_CHUNK_BYTES`, or
    :data:`MIN_CHUNK_TOKENS` tokens of every ladder point where that is more."""
    per_token = len(cache.points) * width * cache.dtype.itemsize
    return max(DEFAULT_CHUNK_BYTES, MIN_CHUNK_TOKENS * per_token)


def rows_per_chunk(
    batch: Tensors, cache: LadderCache, width: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> int:
    """How many rows of ``batch`` (padded to its length) to compute at once so that their
    ladder points, as read from ``cache``, take at most ``chunk_bytes`` (at least one row)."""
    _check(chunk_bytes)
    tokens = sum(batch[cache.mask_keys[p]].shape[1] for p in cache.points)
    row_bytes = tokens * width * cache.dtype.itemsize
    return max(1, chunk_bytes // max(row_bytes, 1))


def per_sample_labels(batch: Mapping[str, torch.Tensor]) -> bool:
    """Whether each row's loss reads one label, not one per token (then its padding
    columns can go)."""
    labels = batch.get("labels")
    return labels is None or labels.dim() == 1


def used_lengths(batch: Mapping[str, torch.Tensor], mask_keys: Sequence[str]) -> dict[str, int]:
    """Per mask key, the longest row's real tokens (masks are right-padded, as the cache
    stores each sample's first ``mask.sum()`` positions); at least 1."""
    return {key: max(1, int(batch[key].sum(dim=1).max())) for key in dict.fromkeys(mask_keys)}


def chunk_rows(
    batch: Tensors, cache: LadderCache, width: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> list[list[int]]:
    """The rows of ``batch`` in chunks whose ladder points, at the chunk's own length
    (:func:`take_rows`), take at most ``chunk_bytes`` (a row too large runs alone):
    longest rows first when the labels are per sample, else in order at the batch's
    length (:func:`rows_per_chunk`)."""
    _check(chunk_bytes)
    rows = next(iter(batch.values())).shape[0] if batch else 0
    if not rows:
        return []
    if not per_sample_labels(batch):
        step = rows_per_chunk(batch, cache, width, chunk_bytes)
        return [list(range(start, min(start + step, rows))) for start in range(0, rows, step)]
    keys = [cache.mask_keys[p] for p in cache.points]  # one per point: a key counts per point
    lengths = {key: batch[key].sum(dim=1).tolist() for key in set(keys)}
    cost = {row: sum(lengths[key][row] for key in keys) for row in range(rows)}
    order = sorted(range(rows), key=lambda row: (-cost[row], row))
    bytes_per_token = width * cache.dtype.itemsize
    chunks: list[list[int]] = []
    longest: dict[str, int] = {}
    for row in order:
        own = {key: int(lengths[key][row]) for key in lengths}
        if chunks:
            grown = {key: max(longest[key], own[key]) for key in lengths}
            tokens = (len(chunks[-1]) + 1) * sum(grown[key] for key in keys)
            if tokens * bytes_per_token <= chunk_bytes:
                chunks[-1].append(row)
                longest = grown
                continue
        chunks.append([row])
        longest = own
    return chunks


def take_rows(batch: Tensors, rows: Sequence[int], mask_keys: Sequence[str], trim: bool) -> Tensors:
    """``rows`` of ``batch``; with ``trim``, each mask cut after the last column they use."""
    index = torch.tensor(list(rows), dtype=torch.long)
    taken = {key: value.index_select(0, index) for key, value in batch.items()}
    if trim:
        for key, length in used_lengths(taken, mask_keys).items():
            taken[key] = taken[key][:, :length]
    return taken


def _check(chunk_bytes: int) -> None:
    if chunk_bytes < 1:
        raise ValueError(f"chunk_bytes must be at least 1, not {chunk_bytes}")
