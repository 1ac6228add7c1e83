"""Fine-tuning techniques behind one face: build one by name.

``build_technique("parallel-adapters", family, task, settings)`` returns a
:class:`~pac.techniques.base.TunedModel`. Adding a technique means adding a package here
and one line in ``TECHNIQUES``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pac.families import ModelFamily
from pac.tasks import TaskSpec
from pac.techniques.adapters import AdapterSettings, AdaptersModel
from pac.techniques.base import TechniqueError, TunedModel
from pac.techniques.full import FullFineTuningModel
from pac.techniques.lora import LoraModel, LoraSettings
from pac.techniques.parallel_adapters import ParallelAdaptersConfig, ParallelAdaptersModel

Builder = Callable[[ModelFamily, TaskSpec, dict[str, Any]], TunedModel]

TECHNIQUES: dict[str, Builder] = {
    "parallel-adapters": lambda f, t, s: ParallelAdaptersModel(
        f, t, ParallelAdaptersConfig.from_dict(s)
    ),
    "full": lambda f, t, s: FullFineTuningModel(f, t),
    "lora": lambda f, t, s: LoraModel(f, t, LoraSettings.from_dict(s)),
    "adapters": lambda f, t, s: AdaptersModel(f, t, AdapterSettings.from_dict(s)),
}


def build_technique(
    name: str, family: ModelFamily, task: TaskSpec, settings: dict[str, Any] | None = None
) -> TunedModel:
    """A tuned model for ``name`` on ``family``'s loaded backbone."""
    try:
        builder = TECHNIQUES[name]
    except KeyError:
        raise TechniqueError(
            f"unknown technique {name!r}; choose one of {', '.join(TECHNIQUES)}"
        ) from None
    return builder(family, task, settings or {})


__all__ = ["TECHNIQUES", "TechniqueError", "TunedModel", "build_technique"]
