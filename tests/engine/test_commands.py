"""`pac train` and `pac predict` as a user runs them: results on disk, and clear errors."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from pac.cache import space
from pac.cli import main


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        str(model),
        "--data",
        str(data),
        "--eval",
        str(data),
        "--task",
        "classification",
        "--epochs",
        "2",
        "--batch-size",
        "8",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def test_train_then_predict(
    tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, data, out = tiny_model_dir("bert"), toy_data("classification", 24), tmp_path / "out"
    assert main(train_args(model, data, out)) == 0
    printed = capsys.readouterr().out
    assert "activation cache:" in printed and "MiB projected" in printed
    assert "backbone released after epoch 1" in printed
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["phase"] for r in records] == ["backbone", "cache"]
    assert all({"loss", "accuracy", "seconds"} <= r.keys() for r in records)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["technique"] == "parallel-adapters" and config["task"]["labels"] == ["neg", "pos"]

    predictions = tmp_path / "predictions.jsonl"
    assert (
        main(
            [
                "predict",
                "--model",
                str(model),
                "--adapters",
                str(out),
                "--data",
                str(data),
                "--out",
                str(predictions),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in predictions.open()]
    assert len(rows) == 24 and {r["prediction"] for r in rows} <= {"neg", "pos"}
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metrics"]
    # pac predict reproduces the last epoch's evaluation exactly.
    assert metrics["accuracy"] == pytest.approx(records[-1]["accuracy"])


def test_predict_refuses_adapters_of_another_model(
    tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, out = toy_data("classification", 8), tmp_path / "out"
    assert main(train_args(tiny_model_dir("bert"), data, out, "--epochs", "1")) == 0
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir("bert"), other)
    (other / "model.safetensors").write_bytes(
        (tiny_model_dir("gpt2") / "model.safetensors").read_bytes()
    )
    assert (
        main(["predict", "--model", str(other), "--adapters", str(out), "--data", str(data)]) == 2
    )
    assert "trained on a different model" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("family", "extra", "message"),
    [
        ("bert", ["--task", "seq2seq"], "seq2seq needs an encoder-decoder model"),
        ("gpt2", ["--head", "text"], "needs an encoder-decoder model"),
        ("bert", ["--technique", "parallel-adapters", "--ladder", "0,9"], "do not exist"),
    ],
)
def test_a_technique_or_task_that_does_not_fit_is_a_clear_error(
    family: str,
    extra: list[str],
    message: str,
    tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = toy_data("seq2seq" if "seq2seq" in extra else "classification", 8)
    args = train_args(tiny_model_dir(family), data, tmp_path / "out", *extra)
    if "--task" in extra:  # the later --task wins in argparse
        args = [a for a in args if a != "classification"]
        args.remove("--task")
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "pac train: error:" in error and message in error
    assert "Traceback" not in error


def test_bad_inputs_are_clear_errors(
    tiny_model_dir: Callable[[str], Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert main(train_args(tiny_model_dir("bert"), empty, tmp_path / "o1")) == 2
    assert "empty" in capsys.readouterr().err

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine", "label": "a"}\n{"text": "oops", \n')
    assert main(train_args(tiny_model_dir("bert"), broken, tmp_path / "o2")) == 2
    assert "broken.jsonl:2" in capsys.readouterr().err

    incomplete = tmp_path / "model"
    shutil.copytree(tiny_model_dir("bert"), incomplete)
    (incomplete / "model.safetensors").unlink()
    good = tmp_path / "good.jsonl"
    good.write_text('{"text": "fine", "label": "a"}\n{"text": "bad", "label": "b"}\n')
    assert main(train_args(incomplete, good, tmp_path / "o3")) == 2
    assert "model.safetensors" in capsys.readouterr().err


def test_a_full_disk_stops_training_before_it_starts(
    tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(space, "free_bytes", lambda path: 1024)
    out = tmp_path / "out"
    assert main(train_args(tiny_model_dir("bert"), toy_data("classification", 8), out)) == 2
    error = capsys.readouterr().err
    assert "cache needs" in error and "free" in error
    assert not (out / "metrics.jsonl").exists()  # nothing was trained


def test_checkpoints_hold_the_trained_state_and_restore_it(
    tiny_model_dir: Callable[[str], Path], toy_data: Callable[..., Path], tmp_path: Path
) -> None:
    from safetensors import safe_open

    from pac.engine.checkpoint import CHECKPOINT_FILE, load_checkpoint
    from pac.engine.export import load_adapters, task_from_config
    from pac.engine.loading import load_model
    from pac.engine.schedule import make_optimizer
    from pac.techniques import build_technique

    model_dir, out = tiny_model_dir("bert"), tmp_path / "out"
    assert (
        main(train_args(model_dir, toy_data("classification", 24), out, "--checkpoint-every", "2"))
        == 0
    )
    checkpoint = out / CHECKPOINT_FILE
    with safe_open(str(checkpoint), framework="pt") as handle:
        assert handle.metadata() == {"step": "6", "epoch": "2"}  # 3 steps x 2 epochs
        names = set(handle.keys())
    assert any(n.endswith("::exp_avg_sq") for n in names)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no torn temp
    config, adapters = load_adapters(out)
    model = build_technique(
        "parallel-adapters",
        load_model(model_dir).family,
        task_from_config(config),
        config["settings"],
    )
    optimizer, _ = make_optimizer(model.trainable_parameters(), 1e-3, total_steps=1)
    load_checkpoint(checkpoint, model, optimizer)
    restored = model.trainable_state_dict()
    for name, value in adapters.items():
        assert torch.equal(restored[name], value), name
    assert len(optimizer.state) == len(adapters)


def test_data_format_weight_decay_and_dropout_on_the_command_line(
    tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rows = [json.loads(line) for line in toy_data("classification", 16).open()]
    table = tmp_path / "reviews.txt"  # a CSV file whose name does not say so
    table.write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    model, out = tiny_model_dir("bert"), tmp_path / "out"
    assert main(train_args(model, table, out)) == 2
    assert "give the data format" in capsys.readouterr().err
    extra = ("--data-format", "csv", "--weight-decay", "0.1", "--dropout", "0.1")
    assert main(train_args(model, table, out, *extra)) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["settings"]["dropout"] == 0.1
    predictions = tmp_path / "predictions.jsonl"
    command = ["predict", "--model", str(model), "--adapters", str(out), "--data", str(table)]
    assert main([*command, "--data-format", "csv", "--out", str(predictions)]) == 0
    assert len(predictions.read_text().splitlines()) == 16
