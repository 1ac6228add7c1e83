"""A job's model directory is checked at submission by the same weight files the engine
loads from (pac/model_files.py): a sharded ``pytorch_model.bin`` checkpoint is a model,
a directory without weights is refused naming them."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from coordinator.jobs import JobSpec, JobSpecError, validate_spec
from pac.families.base import FamilyError
from pac.families.loading import check_model_dir
from pac.model_files import WEIGHT_FILES


def _model_dir(spec: JobSpec, tmp_path: Path, weights: str | None) -> Path:
    """A copy of the spec's model directory's config with only ``weights`` beside it."""
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(Path(spec.model_dir) / "config.json", folder / "config.json")
    if weights is not None:
        (folder / weights).write_text("{}")
    return folder


@pytest.mark.parametrize("weights", WEIGHT_FILES)
def test_every_weight_file_the_engine_loads_is_accepted(
    spec: JobSpec, tmp_path: Path, weights: str
) -> None:
    folder = _model_dir(spec, tmp_path, weights)
    check_model_dir(folder)  # the engine's check
    validate_spec(replace(spec, model_dir=str(folder)))  # and the coordinator's


def test_a_directory_without_weights_is_refused_naming_them(spec: JobSpec, tmp_path: Path) -> None:
    folder = _model_dir(spec, tmp_path, None)
    with pytest.raises(FamilyError, match="has no weights"):
        check_model_dir(folder)
    with pytest.raises(JobSpecError) as raised:
        validate_spec(replace(spec, model_dir=str(folder)))
    [(name, message)] = raised.value.problems
    assert name == "model_dir"
    assert all(weights in message for weights in WEIGHT_FILES)
