"""An agent refuses a mesh job whose model differs from the coordinator's copy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from agent.errors import WeightsMismatch
from agent.training import TrainingSession, WireTransport
from pac.pipeline.job import MeshJobSettings
from pac.pipeline.layout import PipelineLayout, StageSpec
from pac.tasks import TaskSpec


def test_a_different_local_model_is_refused_before_loading(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    settings = MeshJobSettings(
        model_dir=str(tiny_model_dir("bert")),
        task=TaskSpec("classification", labels=("a", "b")),
        technique="parallel-adapters",
        technique_settings={},
        layout=PipelineLayout((StageSpec(0, 2, ("agent-0",), (1.0,)),), micro_batches=1),
        addresses={"agent-0": "127.0.0.1:1"},
        model_fingerprint="0" * 64,
    )
    assert MeshJobSettings.from_json(settings.to_json()) == settings
    transport = cast(WireTransport, cast(Any, None))
    with pytest.raises(WeightsMismatch, match="is not the job's"):
        TrainingSession("job", "agent-0", settings, tmp_path, transport)
