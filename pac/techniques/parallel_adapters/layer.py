"""The side network's building blocks: a gated ladder input and a small transformer block."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def attention_mask(
    key_mask: torch.Tensor, query_len: int, causal: bool, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The additive mask (0 = may attend, -inf = may not) of a 0/1 key mask ``[batch,
    key_len]``, in ``dtype``: ``[batch, 1, 1, key_len]``, the same for every query; with
    ``causal`` ``[batch, 1, query_len, key_len]``, where a query also sees no later key.

    Build it once per forward and give it to every block: attention keeps its mask for the
    backward, and a boolean mask it would keep as a float ``[batch, 1, query, key]`` copy
    per block."""
    allowed = key_mask.bool()[:, None, None, :]
    if causal:
        key_len = key_mask.shape[1]
        lower = torch.ones(query_len, key_len, dtype=torch.bool, device=key_mask.device).tril()
        allowed = allowed & lower
    blocked = torch.zeros(allowed.shape, dtype=dtype, device=key_mask.device)
    return blocked.masked_fill_(~allowed, float("-inf"))


Prepare = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
CarryBack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _LinearKeepingInput(torch.autograd.Function):
    """``linear(prepare(x, weight))`` that keeps only ``x`` for the backward and prepares
    it again there for the weight's gradient; ``carry_back(grad, x)`` takes a gradient of
    ``prepare(x)`` back to ``x``."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        prepare: Prepare,
        carry_back: CarryBack,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.prepare, ctx.carry_back = prepare, carry_back
        return F.linear(prepare(x, weight), weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        rows = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[1]:
            prepared = ctx.prepare(x, weight)
            grad_weight = rows.t().mm(prepared.reshape(-1, prepared.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = rows.sum(0)
        if ctx.needs_input_grad[0]:
            grad_x = ctx.carry_back(grad_out.matmul(weight), x)
        return grad_x, grad_weight, grad_bias, None, None


def _linear_keeping_input(
    x: torch.Tensor, linear: nn.Linear, prepare: Prepare, carry_back: CarryBack
) -> torch.Tensor:
    out: torch.Tensor = _LinearKeepingInput.apply(
        x, linear.weight, linear.bias, prepare, carry_back
    )
    return out


def _widen(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.to(weight.dtype)


def _narrow(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return grad.to(x.dtype)


def _gelu(hidden: torch.Tensor, _weight: torch.Tensor) -> torch.Tensor:
    return F.gelu(hidden)


def _gelu_back(grad: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.gelu_backward(grad, hidden)


def widen_then_linear(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``linear(x.to(linear.weight.dtype))``, the same values; a narrower ``x`` (a ladder
    point read from an fp16 cache) is kept for the backward as it is, not as a float32
    copy: the weight's gradient widens it again there."""
    if x.dtype == linear.weight.dtype or not torch.is_grad_enabled():
        return linear(x.to(linear.weight.dtype))
    return _linear_keeping_input(x, linear, _widen, _narrow)


def gelu_then_linear(hidden: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``linear(F.gelu(hidden))``, the same values, holding one copy of ``hidden`` for the
    backward instead of two: the weight's gradient computes the GELU again (the MLP's
    widest activation is not held twice)."""
    if not torch.is_grad_enabled():
        return linear(F.gelu(hidden))
    return _linear_keeping_input(hidden, linear, _gelu, _gelu_back)


class SideAttention(nn.Module):
    """Multi-head attention of width ``width`` (self- or cross-attention)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        # No key bias: softmax ignores it, so its gradient is pure rounding noise that Adam
        # would blow up into full-size steps.
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` ``[batch, q, w]`` attends to ``memory`` ``[batch, k, w]`` under ``mask``
        (additive, broadcast to ``[batch, 1, q, k]``); returns ``[batch, q, w]``."""
        batch, q_len, width = x.shape
        head_dim = width // self.heads
        query = self.query(x).view(batch, q_len, self.heads, head_dim).transpose(1, 2)
        key = self.key(memory).view(batch, -1, self.heads, head_dim).transpose(1, 2)
        value = self.value(memory).view(batch, -1, self.heads, head_dim).transpose(1, 2)
        mixed = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        return self.out(mixed.transpose(1, 2).reshape(batch, q_len, width))


class SideBlock(nn.Module):
    """A pre-norm transformer block of the side network: self-attention, optional
    cross-attention to the side encoder's output, and an MLP."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: int, cross_attention: bool, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.norm_self = nn.LayerNorm(width)
        self.self_attention = SideAttention(width, heads)
        self.norm_cross: nn.LayerNorm | None = None
        self.cross_attention: SideAttention | None = None
        if cross_attention:
            self.norm_cross = nn.LayerNorm(width)
            self.cross_attention = SideAttention(width, heads)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )

    def forward(
        self,
        x: torch.Tensor,
        self_mask: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` ``[batch, seq, w]`` -> ``[batch, seq, w]``."""
        normed = self.norm_self(x)
        x = x + self.dropout(self.self_attention(normed, normed, self_mask))
        if self.cross_attention is not None and self.norm_cross is not None:
            if memory is None or memory_mask is None:
                raise ValueError("a cross-attending side block needs the side encoder's output")
            x = x + self.dropout(self.cross_attention(self.norm_cross(x), memory, memory_mask))
        up, down = self.mlp[0], self.mlp[2]  # (Linear, GELU, Linear: the state dict's names)
        assert isinstance(down, nn.Linear)
        return x + self.dropout(gelu_then_linear(up(self.norm_mlp(x)), down))


class LadderGate(nn.Module):
    """Mixes a backbone layer into the side state (Ladder Side-Tuning's gate):
    ``g * down(h) + (1 - g) * side`` with ``g = sigmoid(alpha)``, one ``alpha`` per layer."""

    def __init__(self, d_model: int, width: int) -> None:
        super().__init__()
        self.down = nn.Linear(d_model, width)
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, backbone_hidden: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
        """``backbone_hidden`` ``[batch, seq, d_model]`` in the backbone's (or the cache's)
        dtype, ``side`` ``[batch, seq, w]`` -> ``[batch, seq, w]`` in the gate's dtype."""
        gate = torch.sigmoid(self.alpha)
        return gate * widen_then_linear(backbone_hidden, self.down) + (1.0 - gate) * side
