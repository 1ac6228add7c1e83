"""Model families: one small file each, found by `config.model_type`."""

from __future__ import annotations

import json
from pathlib import Path

from pac.families.base import Block, FamilyError, ModelFamily, State

_REGISTRY: dict[str, type[ModelFamily]] = {}


def register(family: type[ModelFamily]) -> type[ModelFamily]:
    """Class decorator: make a family available under each of its model types."""
    for model_type in family.model_types:
        _REGISTRY[model_type] = family
    return family


def _import_builtin_families() -> None:
    # Imported for their @register side effect.
    from . import bart, bert, gpt2, llama, t5  # noqa: F401


def family_for_model_type(model_type: str) -> type[ModelFamily]:
    _import_builtin_families()
    try:
        return _REGISTRY[model_type]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise FamilyError(
            f"model type {model_type!r} is not supported; supported: {known}"
        ) from None


def family_for_dir(model_dir: str | Path) -> type[ModelFamily]:
    """The family of a local Hugging Face model directory, from its config.json."""
    config_path = Path(model_dir) / "config.json"
    if not config_path.is_file():
        raise FamilyError(
            f"{model_dir} is not a Hugging Face model directory: {config_path.name} is missing"
        )
    model_type = json.loads(config_path.read_text()).get("model_type")
    if not model_type:
        raise FamilyError(f"{config_path} has no 'model_type'")
    return family_for_model_type(str(model_type))


__all__ = [
    "Block",
    "FamilyError",
    "ModelFamily",
    "State",
    "family_for_dir",
    "family_for_model_type",
    "register",
]
