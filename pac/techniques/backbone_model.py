"""The shape every baseline shares: the whole backbone in the forward (and backward) pass,
then the task head. Full fine-tuning, LoRA and bottleneck adapters differ only in which
parameters they add and train."""

from __future__ import annotations

import torch

from pac.families import ModelFamily
from pac.tasks import TaskSpec
from pac.techniques.base import TunedModel


class BackboneTunedModel(TunedModel):
    """Backbone (registered as a submodule, so ``train()`` enables its dropout) + head."""

    def __init__(self, family: ModelFamily, task: TaskSpec) -> None:
        super().__init__(family, task)
        self.backbone = family.model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.family.forward_hidden(batch), batch)
