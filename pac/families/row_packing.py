"""A device's rows packed into one sequence: the real tokens only, end to end.

A frozen backbone that computes several rows alone (one pipeline stage through every block)
does not need them padded to a common width. Packed, its rows become one row of all their
real tokens, ``[1, tokens, d]``, and each block runs once over them: every linear layer
multiplies all the tokens in one call (on a CPU a call's cost falls per token as it grows,
so one call for a device's rows costs less than one per micro-batch) and none multiplies
padding. Attention stays within each row: a block-diagonal mask lets a token see only the
real tokens of its own row (``segments``: each packed token's row). As attention computes
every pair of a packed row's tokens, masked or not, a device's rows are packed in groups of
at most :data:`PACK_TOKENS`.

Only the blocks run packed: the embeddings run padded (positions start again in every
row) and the ladder points are unpacked to ``[rows, seq, d]`` (zero where a row is padded)
for the side network and the cache, which read real positions only.
"""

from __future__ import annotations

import torch

from pac.families.base import State

SEGMENTS = "segments"
# Tokens packed into one row at most (a longer row goes alone). Attention over a packed row
# computes every pair of its tokens, the masked ones too: at 256 tokens that is about 4% of
# a BERT-large block's work per token (4 x 256 x d of its 24 x d^2 multiply-adds), where
# linear layers of 256 rows already run at their full speed per row on a CPU.
PACK_TOKENS = 256


def packed_groups(mask: torch.Tensor, limit: int = PACK_TOKENS) -> list[tuple[int, int]]:
    """The rows of 0/1 ``mask`` ``[rows, seq]`` as consecutive ranges ``[start, stop)`` of at
    most ``limit`` real tokens each (a row of more goes alone), in order."""
    groups: list[tuple[int, int]] = []
    start, tokens = 0, 0
    for row, length in enumerate(mask.sum(dim=1).tolist()):
        if row > start and tokens + length > limit:
            groups.append((start, row))
            start, tokens = row, 0
        tokens += int(length)
    if mask.shape[0] > start:
        groups.append((start, mask.shape[0]))
    return groups


def pack_rows(hidden: torch.Tensor, mask: torch.Tensor) -> State:
    """``hidden`` ``[rows, seq, d]`` with 0/1 ``mask`` ``[rows, seq]`` (right padding) ->
    the packed state: ``hidden`` ``[1, tokens, d]`` (row by row, real tokens in order) and
    ``segments`` ``[1, tokens]`` int64 (the row of each)."""
    real = mask.bool()
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(real)
    return {"hidden": hidden[real][None], SEGMENTS: rows[real][None]}


def unpack_rows(packed: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``packed`` ``[1, tokens, d]`` back to ``[rows, seq, d]`` under ``mask``, zeros where
    a row is padded."""
    out = packed.new_zeros((*mask.shape, packed.shape[-1]))
    out[mask.bool()] = packed[0]
    return out


def segment_mask(segments: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``segments`` ``[1, tokens]`` -> additive ``[1, 1, tokens, tokens]``: a token attends to
    the tokens of its own row only (0 there, the dtype's minimum elsewhere)."""
    same = segments[:, None, :, None] == segments[:, None, None, :]
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=segments.device)
    return torch.where(same, torch.zeros((), dtype=dtype, device=segments.device), blocked)
