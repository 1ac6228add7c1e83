"""A Houlsby bottleneck adapter: ``x + up(gelu(down(x)))``, the identity at start."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BottleneckAdapter(nn.Module):
    def __init__(self, d_model: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(d_model, bottleneck)
        self.up = nn.Linear(bottleneck, d_model)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[..., d_model]`` -> same shape and dtype. The adapter computes in its
        own dtype (float32 beside a bfloat16 backbone) and adds its output in ``x``'s."""
        update = self.up(F.gelu(self.down(x.to(self.down.weight.dtype))))
        return x + update.to(x.dtype)
