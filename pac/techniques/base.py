"""One face for every fine-tuning technique.

A technique wraps a loaded backbone (a :class:`~pac.families.ModelFamily`) and a task into
a :class:`TunedModel`: a module whose ``forward(batch)`` returns the task's outputs and
whose trainable parameters are exactly what the technique trains. Techniques register
themselves by name (see ``pac.techniques.__init__``), like PEFT's tuners.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from pac.families import ModelFamily
from pac.tasks import TaskSpec
from pac.techniques.backbone_dtype import SETTING, dtype_name, module_dtype
from pac.techniques.heads import TaskHead


class TechniqueError(ValueError):
    """A technique does not fit the model or the task."""


class TunedModel(nn.Module, ABC):
    """A backbone plus what a technique trains, with a task head on top.

    ``forward(batch)`` returns the outputs the head defines: logits ``[batch, classes]``,
    values ``[batch]`` for regression, or vocabulary logits ``[batch, seq, vocab]``.
    """

    technique: ClassVar[str]
    # True when epochs 2..N may train from the activation cache instead of the backbone.
    uses_cache: ClassVar[bool] = False

    def __init__(self, family: ModelFamily, task: TaskSpec) -> None:
        super().__init__()
        if task.kind not in family.supported_tasks:
            raise TechniqueError(
                f"model family {family.name!r} does not support task {task.kind!r}; "
                f"it supports {', '.join(sorted(family.supported_tasks))}"
            )
        self.family = family
        self.task = task
        # What the backbone was loaded in (see pac.techniques.backbone_dtype); what the
        # technique trains is float32 whatever this is.
        self.backbone_dtype = module_dtype(family.model)
        self.head = TaskHead(family, task)

    @abstractmethod
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Outputs of the task head for ``batch`` (see the class docstring)."""

    def loss(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The task's training loss (a scalar)."""
        return self.head.loss(outputs, batch)

    def loss_terms(
        self, outputs: torch.Tensor, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, int]:
        """``(summed loss, count)`` (see :meth:`TaskHead.loss_terms`)."""
        return self.head.loss_terms(outputs, batch)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What an export holds: every trainable tensor, by qualified name."""
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        return {
            name: tensor.detach().clone()
            for name, tensor in self.state_dict().items()
            if name in trainable
        }

    def load_trainable_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load an export made by :meth:`trainable_state_dict`; unknown or missing names
        are an error, not silently ignored."""
        expected = set(self.trainable_state_dict())
        missing, unexpected = expected - set(tensors), set(tensors) - expected
        if missing or unexpected:
            raise TechniqueError(
                f"adapter weights do not fit this {self.technique} model: "
                f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
            )
        self.load_state_dict(tensors, strict=False)

    def settings_dict(self) -> dict[str, Any]:
        """The technique's own settings (a subclass's dataclass, as a dict)."""
        return {}

    def config_dict(self) -> dict[str, Any]:
        """Technique settings, saved beside exported weights: :meth:`settings_dict` plus
        ``"backbone_dtype"`` when the backbone was loaded in bfloat16, so that the export is
        loaded back the way it was trained."""
        settings = self.settings_dict()
        if self.backbone_dtype == torch.bfloat16:  # float64 (exactness tests) stays unsaid
            settings[SETTING] = dtype_name(self.backbone_dtype)
        return settings
