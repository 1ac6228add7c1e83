"""Bottleneck adapters (Houlsby et al.): one after the attention output projection and one
after the MLP output projection of every block, attached as forward hooks so the family's
modules stay untouched."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pac.families import ModelFamily
from pac.tasks import TaskSpec
from pac.techniques.adapters.config import AdapterSettings
from pac.techniques.adapters.layer import BottleneckAdapter
from pac.techniques.backbone_model import BackboneTunedModel
from pac.techniques.base import TechniqueError


def adapter_sites(module: nn.Module, suffixes: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    """Submodules whose qualified name is one of ``suffixes`` or ends with ``"." + suffix``."""
    return [
        (name, sub)
        for name, sub in module.named_modules()
        if any(name == s or name.endswith("." + s) for s in suffixes)
    ]


class AdaptersModel(BackboneTunedModel):
    technique = "adapters"

    def __init__(
        self, family: ModelFamily, task: TaskSpec, settings: AdapterSettings | None = None
    ) -> None:
        super().__init__(family, task)
        self.settings = settings or AdapterSettings()
        self.backbone.requires_grad_(False)
        sites = adapter_sites(self.backbone, family.adapter_points)
        if not sites:
            raise TechniqueError(f"no adapter points found in the {family.name} backbone")
        size = self.settings.size_for(family.hidden_size)
        self.adapters = nn.ModuleDict()
        for name, module in sites:
            key = name.replace(".", "__")
            adapter = BottleneckAdapter(family.hidden_size, size)
            self.adapters[key] = adapter
            module.register_forward_hook(_apply(adapter))

    def settings_dict(self) -> dict[str, Any]:
        return self.settings.to_dict()


def _apply(adapter: BottleneckAdapter) -> Any:
    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if isinstance(output, tuple):
            return (adapter(output[0]), *output[1:])
        if isinstance(output, torch.Tensor):
            return adapter(output)
        raise TypeError(f"cannot attach an adapter to an output of type {type(output)}")

    return hook
