"""LoRA through PEFT: low-rank updates injected into the backbone's attention projections."""

from __future__ import annotations

from typing import Any

from pac.families import ModelFamily
from pac.tasks import TaskSpec
from pac.techniques.backbone_model import BackboneTunedModel
from pac.techniques.lora.config import LoraSettings


class LoraModel(BackboneTunedModel):
    technique = "lora"

    def __init__(
        self, family: ModelFamily, task: TaskSpec, settings: LoraSettings | None = None
    ) -> None:
        # Imported here: peft costs ~100 MB of memory, which no other technique should pay.
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.tuners_utils import cast_adapter_dtype

        super().__init__(family, task)
        self.settings = settings or LoraSettings()
        self.backbone.requires_grad_(False)
        config = LoraConfig(
            r=self.settings.r,
            lora_alpha=self.settings.alpha,
            lora_dropout=self.settings.dropout,
            target_modules=list(family.lora_targets),
        )
        # Marks only the injected lora_A / lora_B weights trainable inside the backbone.
        inject_adapter_in_model(config, self.backbone)
        # PEFT creates them in the base layer's dtype; with a bfloat16 backbone they are
        # lifted to float32 (PEFT's own autocast_adapter_dtype), and PEFT's forward casts
        # the input to them and their sum back to bfloat16.
        cast_adapter_dtype(self.backbone, adapter_name="default")

    def settings_dict(self) -> dict[str, Any]:
        return self.settings.to_dict()
