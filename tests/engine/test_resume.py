"""A standalone run stopped part way goes on from its checkpoint (``pac train --resume``)
and ends where an uninterrupted run ends: the steps before the checkpoint count once, the
schedule continues, and a parallel-adapters run refills what its cache lacks before it
releases the backbone."""

from __future__ import annotations

import gc
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pac.cli import main
from pac.engine.checkpoint import CHECKPOINT_FILE
from pac.engine.trainer import TrainConfig, Trainer
from pac.tasks import TaskSpec
from tests.engine.test_commands import train_args

BATCH, EPOCHS = 4, 3


class PowerCut(Exception):
    pass


def config(model_dir: Path, data: Path, out: Path, technique: str) -> TrainConfig:
    return TrainConfig(
        model_dir=model_dir, train_path=data, eval_path=data, task=TaskSpec("classification"),
        technique=technique, technique_settings={"reduction": 4} if technique == "parallel-adapters"
        else {}, epochs=EPOCHS, batch_size=BATCH, learning_rate=1e-2, seed=3, out_dir=out,
        checkpoint_every=2,
    )


def without_dropout(model_dir: Path, into: Path) -> Path:
    shutil.copytree(model_dir, into)
    config = json.loads((into / "config.json").read_text())
    zero = {k: 0.0 for k in config if "dropout" in k and isinstance(config[k], float)}
    (into / "config.json").write_text(json.dumps(config | zero))
    return into


def stopped_at(trainer: Trainer, epoch: int, steps: int) -> None:
    """Train ``trainer`` through epoch ``epoch - 1``, then ``steps`` steps into ``epoch``,
    and stop it there as a power cut would."""
    for done in range(1, epoch):
        loss, phase = trainer.train_epoch(done)
        trainer.end_epoch(done, phase, loss, 1.0)

    def cut(count: int, loss: float) -> None:
        if count >= steps * BATCH:
            raise PowerCut

    with pytest.raises(PowerCut):
        trainer.train_epoch(epoch, on_step=cut)


@pytest.mark.parametrize(
    ("technique", "epoch", "steps"),
    [("parallel-adapters", 2, 3), ("parallel-adapters", 1, 3), ("lora", 2, 2)],
    ids=["pac-cache-phase", "pac-epoch-1", "lora"],
)
def test_a_resumed_run_ends_where_an_uninterrupted_one_ends(
    technique: str, epoch: int, steps: int, tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path], tmp_path: Path,
) -> None:
    model_dir, data = tiny_model_dir("bert"), toy_data("classification", 24)
    if technique == "lora":  # it trains at the backbone's dropout: 0, so that runs agree
        model_dir = without_dropout(model_dir, tmp_path / "bert-no-dropout")
    whole = Trainer(config(model_dir, data, tmp_path / "whole", technique))
    whole.run()
    expected = whole.model.trainable_state_dict()
    del whole

    out = tmp_path / "stopped"
    first = Trainer(config(model_dir, data, out, technique))
    stopped_at(first, epoch, steps)
    per_epoch = first.steps_per_epoch
    del first
    gc.collect()

    again = Trainer(config(model_dir, data, out, technique))
    step = again.resume(out / CHECKPOINT_FILE)
    # The last checkpoint: every 2 steps, and at each epoch's end.
    assert step == (epoch - 1) * per_epoch + (steps // 2) * 2
    again.run()
    for name, value in expected.items():
        torch.testing.assert_close(
            again.model.trainable_state_dict()[name], value, atol=2e-5, rtol=1e-4, msg=name
        )
    reports = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in reports] == [1, 2, 3]  # each epoch reported once


def test_pac_train_resume_needs_a_checkpoint(
    tiny_model_dir: Callable[[str], Path], toy_data: Callable[..., Path], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    args = train_args(tiny_model_dir("bert"), toy_data("classification", 24), out, "--resume")
    assert main(args) == 2
    assert "--resume: no checkpoint at" in capsys.readouterr().err
