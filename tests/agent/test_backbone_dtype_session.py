"""A mesh job's technique settings carry ``backbone_dtype`` to every agent: the replica's
backbone loads in it, what trains stays float32, and the agent's cache is its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch

from agent.training import TrainingSession, WireTransport
from pac.pipeline.job import MeshJobSettings
from pac.pipeline.layout import PipelineLayout, StageSpec
from pac.tasks import TaskSpec


def test_the_agent_loads_the_jobs_backbone_dtype(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path
) -> None:
    settings = MeshJobSettings(
        model_dir=str(tiny_model_dir("bert")),
        task=TaskSpec("classification", labels=("a", "b")),
        technique="parallel-adapters",
        technique_settings={"reduction": 4, "backbone_dtype": "bfloat16"},
        layout=PipelineLayout((StageSpec(0, 2, ("agent-0",), (1.0,)),), micro_batches=1),
        addresses={"agent-0": "127.0.0.1:1"},
    )
    travelled = MeshJobSettings.from_json(settings.to_json())
    assert travelled == settings
    transport = cast(WireTransport, cast(Any, None))  # no step runs here
    session = TrainingSession("job", "agent-0", travelled, tmp_path, transport)
    assert session.loaded.family.model.dtype == torch.bfloat16
    assert {p.dtype for p in session.model.trainable_parameters()} == {torch.float32}
    assert session.cache.key.ladder.endswith(";dtype=bfloat16")
    assert session.model.config_dict()["backbone_dtype"] == "bfloat16"
