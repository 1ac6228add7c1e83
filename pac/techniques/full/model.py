"""Full fine-tuning: every backbone weight is trained (the paper's upper baseline)."""

from __future__ import annotations

from pac.families import ModelFamily
from pac.tasks import TaskSpec
from pac.techniques.backbone_dtype import HALF_DTYPES, dtype_name
from pac.techniques.backbone_model import BackboneTunedModel
from pac.techniques.base import TechniqueError


class FullFineTuningModel(BackboneTunedModel):
    technique = "full"

    def __init__(self, family: ModelFamily, task: TaskSpec) -> None:
        super().__init__(family, task)
        if self.backbone_dtype in HALF_DTYPES:
            # Its weights are what it trains: bf16 weights would lose the small updates.
            raise TechniqueError(
                f"full fine-tuning trains the backbone itself and needs it in float32, not "
                f"{dtype_name(self.backbone_dtype)}; drop backbone_dtype (--backbone-dtype) "
                "or pick a technique with a frozen backbone (parallel-adapters, lora, adapters)"
            )
        self.backbone.requires_grad_(True)
