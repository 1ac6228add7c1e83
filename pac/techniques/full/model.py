"""Full fine-tuning: every backbone weight is trained (the paper's upper baseline)."""

from __future__ import annotations

from pac.families import ModelFamily
from pac.tasks import TaskSpec
from pac.techniques.backbone_model import BackboneTunedModel


class FullFineTuningModel(BackboneTunedModel):
    technique = "full"

    def __init__(self, family: ModelFamily, task: TaskSpec) -> None:
        super().__init__(family, task)
        self.backbone.requires_grad_(True)
