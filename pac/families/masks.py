"""Additive attention masks built from the state's 2-D padding mask.

The state carries only ``attention_mask`` ``[batch, seq]`` (1 = real token); each block
builds the 4-D mask it needs here, which is cheap and keeps the state small on the wire.
Masks are additive (0 = attend, dtype min = blocked) in the hidden state's dtype, the
format every Hugging Face attention implementation (eager and sdpa) accepts.
"""

from __future__ import annotations

import torch


def padding_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[batch, key_seq]`` 0/1 -> additive ``[batch, 1, 1, key_seq]``: blocks padded keys."""
    allowed = mask[:, None, None, :].bool()
    return _additive(allowed, dtype)


def causal_mask(
    mask: torch.Tensor, dtype: torch.dtype, sliding_window: int | None = None
) -> torch.Tensor:
    """``[batch, seq]`` 0/1 -> additive ``[batch, 1, seq, seq]``: a query sees real keys at or
    before its own position (and, with ``sliding_window``, fewer than that many back).

    With right padding every query still sees key 0, so no row is fully blocked."""
    seq = mask.shape[-1]
    positions = torch.arange(seq, device=mask.device)
    query, key = positions[:, None], positions[None, :]
    allowed = key <= query
    if sliding_window is not None:
        allowed = allowed & (query - key < sliding_window)
    allowed = allowed[None, None, :, :] & mask[:, None, None, :].bool()
    return _additive(allowed, dtype)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, blocked)
