"""Optimizer and learning-rate schedule shared by every technique."""

from __future__ import annotations

import torch
from torch import nn

# Learning rates that worked per technique (see shared/QUALITY-NOTES.md).
DEFAULT_LEARNING_RATE = {
    "parallel-adapters": 1e-3,
    "lora": 1e-3,
    "adapters": 1e-3,
    "full": 5e-5,
}


def make_optimizer(
    parameters: list[nn.Parameter],
    learning_rate: float,
    total_steps: int,
    warmup_ratio: float = 0.06,
    weight_decay: float = 0.0,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with linear warm-up and linear decay to zero over ``total_steps``."""
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    warmup = max(1, int(total_steps * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def resume_schedule(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Put ``scheduler`` (and its optimizer's learning rates) where it is after ``step``
    optimizer steps, as if it had stepped that many times (a job restarted from a
    checkpoint continues its schedule)."""
    rates = [
        base * factor(step)
        for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)
    ]
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    scheduler.last_epoch = step
    scheduler._last_lr = rates  # what get_last_lr() reports
