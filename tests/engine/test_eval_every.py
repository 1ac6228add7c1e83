"""``pac train --eval-every N``: evaluation after every N-th epoch and after the last; the
epochs it skips train the same, and a parallel-adapters run still caches the evaluation set
before it releases the backbone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pac.cli import main
from pac.engine.trainer import TrainConfig
from pac.tasks import TaskSpec
from tests.engine.test_commands import train_args


def _records(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").open()]


@pytest.mark.parametrize("technique", ["parallel-adapters", "lora"])
def test_skipped_evaluations_change_nothing_but_the_report(
    tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path],
    tmp_path: Path,
    technique: str,
) -> None:
    model, data = tiny_model_dir("bert"), toy_data("classification", 24)
    every, sparse = tmp_path / "every", tmp_path / "sparse"
    common = ["--epochs", "5", "--technique", technique]
    assert main(train_args(model, data, every, *common)) == 0
    assert main(train_args(model, data, sparse, *common, "--eval-every", "2")) == 0
    each, some = _records(every), _records(sparse)
    assert [("accuracy" in r) for r in each] == [True] * 5
    assert [("accuracy" in r) for r in some] == [False, True, False, True, True]
    # The same training: the same losses, and the last evaluation equal.
    assert [r["loss"] for r in some] == [r["loss"] for r in each]
    assert some[-1]["accuracy"] == each[-1]["accuracy"]
    assert some[3]["accuracy"] == each[3]["accuracy"]
    if technique == "parallel-adapters":  # evaluated from the cache after the release
        assert [r["phase"] for r in some] == ["backbone"] + ["cache"] * 4


def test_eval_every_is_a_positive_number_of_epochs(
    tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, data = tiny_model_dir("bert"), toy_data("classification", 8)
    with pytest.raises(ValueError, match="eval_every is a number of epochs"):
        TrainConfig(model_dir=model, train_path=data, task=TaskSpec("classification"), eval_every=0)
    assert main(train_args(model, data, tmp_path / "out", "--eval-every", "0")) == 2
    assert "eval_every is a number of epochs (1 = after each), not 0" in capsys.readouterr().err
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
