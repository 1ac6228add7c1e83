"""A job's weight decay and dropout reach what trains: the optimizer on the coordinator
(local jobs) and on every agent (mesh jobs), the side blocks' or LoRA's dropout; and the
command lines pass them on."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import torch

from agent.training import TrainingSession, WireTransport
from coordinator.commands import submit
from coordinator.core import Coordinator
from coordinator.drivers.local import technique_settings
from coordinator.drivers.mesh_job import JobData
from coordinator.job_messages import spec_from_proto, spec_to_proto
from coordinator.jobs import DEFAULT_MAX_RESTARTS, JobSpec, JobState
from pac.cli import main as pac_main
from pac.engine.trainer import TrainConfig, Trainer
from pac.pipeline.job import MeshJobSettings
from pac.pipeline.layout import PipelineLayout, StageSpec
from pac.techniques import build_technique
from pac.techniques.base import TunedModel


def _dropouts(model: TunedModel) -> set[float]:
    """The probabilities of the dropout layers in the trained modules (the side network,
    LoRA's matrices; the frozen backbone runs in eval mode)."""
    return {
        module.p
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Dropout) and module.p and ("side" in name or "lora" in name)
    }


@pytest.mark.parametrize("technique", ["parallel-adapters", "lora"])
def test_the_jobs_dropout_reaches_the_trained_modules(spec: JobSpec, technique: str) -> None:
    from pac.engine.loading import load_model
    from pac.tasks import TaskSpec

    job = replace(spec, technique=technique, dropout=0.25)
    settings = technique_settings(job)
    assert settings["dropout"] == 0.25
    loaded = load_model(job.model_dir)
    task = TaskSpec("classification", labels=("a", "b"))
    model = build_technique(technique, loaded.family, task, settings)
    assert _dropouts(model) == {0.25}
    # Without it, none of the trained modules drops anything.
    plain = build_technique(
        technique, load_model(job.model_dir).family, task,
        technique_settings(replace(job, dropout=0.0)),
    )
    assert _dropouts(plain) == set()


def test_weight_decay_reaches_the_local_optimizer(spec: JobSpec, tmp_path: Path) -> None:
    from pac.tasks import TaskSpec

    trainer = Trainer(
        TrainConfig(
            model_dir=Path(spec.model_dir), train_path=Path(spec.data_path),
            task=TaskSpec("classification", max_length=16), out_dir=tmp_path / "out",
            epochs=1, batch_size=4, weight_decay=0.3,
        )
    )
    assert {g["weight_decay"] for g in trainer.optimizer.param_groups} == {0.3}


def test_weight_decay_reaches_every_agents_optimizer(spec: JobSpec, tmp_path: Path) -> None:
    layout = PipelineLayout((StageSpec(0, 2, ("agent-0",), (1.0,)),), micro_batches=1)
    data = JobData.load(replace(spec, weight_decay=0.3), layout, {"agent-0": "127.0.0.1:1"})
    assert data.settings.weight_decay == 0.3
    received = MeshJobSettings.from_json(data.settings.to_json())  # as the agent reads it
    assert received is not None and received.weight_decay == 0.3
    transport = cast(WireTransport, cast(Any, None))  # nothing is sent while building
    session = TrainingSession("job", "agent-0", received, tmp_path, transport)
    assert {g["weight_decay"] for g in session.worker.optimizer.param_groups} == {0.3}


def test_pac_submit_sends_weight_decay_dropout_and_the_data_format() -> None:
    parser = argparse.ArgumentParser()
    submit.add_arguments(parser)
    args = parser.parse_args(
        ["--model", "/m", "--data", "/d.jsonl", "--task", "classification",
         "--weight-decay", "0.01", "--dropout", "0.1", "--data-format", "csv"]
    )
    message = submit.build_spec(args)
    assert message.data.format == "csv"
    assert message.technique_json == ""
    merged = submit.build_spec(
        parser.parse_args(
            ["--model", "/m", "--data", "/d.jsonl", "--task", "classification",
             "--technique-json", '{"reduction": 4}', "--checkpoint-every", "5"]
        )
    )
    assert json.loads(merged.technique_json) == {"reduction": 4, "checkpoint_every": 5}
    assert message.training.weight_decay == pytest.approx(0.01)
    assert message.training.dropout == pytest.approx(0.1)


def test_max_restarts_travels_and_defaults_to_two_when_unset() -> None:
    parser = argparse.ArgumentParser()
    submit.add_arguments(parser)
    base = ["--model", "/m", "--data", "/d.jsonl", "--task", "classification"]
    assert spec_from_proto(submit.build_spec(parser.parse_args(base))).max_restarts == 2
    none = submit.build_spec(parser.parse_args([*base, "--max-restarts", "0"]))
    assert none.training.HasField("max_restarts")
    assert spec_from_proto(none).max_restarts == 0
    # A client that does not know the field (proto3 presence): the default, not 0.
    none.training.ClearField("max_restarts")
    assert spec_from_proto(none).max_restarts == DEFAULT_MAX_RESTARTS == 2
    assert spec_from_proto(spec_to_proto(JobSpec("/m", "/d", "classification", max_restarts=5))
                           ).max_restarts == 5


def test_pac_train_refuses_a_dropout_the_technique_cannot_take(
    spec: JobSpec, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = pac_main(
        ["train", "--model", spec.model_dir, "--data", spec.data_path, "--task",
         "classification", "--technique", "full", "--dropout", "0.1",
         "--out", str(tmp_path / "out")]
    )
    assert code == 2
    assert "--dropout: full trains at the model's own dropout" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_data_format_lets_a_job_read_a_file_of_any_name(
    make_coordinator: Callable[..., Coordinator], spec: JobSpec, tmp_path: Path
) -> None:
    rows = [json.loads(line) for line in Path(spec.data_path).read_text().splitlines()]
    table = tmp_path / "reviews.txt"
    table.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    job = replace(spec, data_path=str(table), eval_path="", data_format="csv", epochs=1)
    # The mesh driver reads it the same way.
    layout = PipelineLayout((StageSpec(0, 2, ("agent-0",), (1.0,)),), micro_batches=1)
    data = JobData.load(job, layout, {"agent-0": "127.0.0.1:1"})
    assert len(data.samples) == len(rows) and data.task.labels == ("neg", "pos")
    coordinator = make_coordinator()
    done = coordinator.wait(coordinator.submit(job).job_id, timeout=120)
    assert done.state == JobState.DONE, done.reason
