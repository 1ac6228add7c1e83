"""A bfloat16 frozen backbone (``backbone_dtype``): what trains stays float32, its gradients
are close to a float32 backbone's, training learns, and exports predict through `pac
predict`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from pac.cache.key import CacheKey
from pac.cache.store import ActivationCache
from pac.cli import main
from pac.data.collate import collate
from pac.engine.dataset import DataFields, load_samples, pad_id, resolve_task
from pac.engine.ladder_cache import LadderCache
from pac.engine.loading import load_model
from pac.engine.prediction import load_tuned_model
from pac.engine.schedule import make_optimizer
from pac.engine.trainer import TrainConfig, Trainer
from pac.tasks import TaskSpec
from pac.techniques import TechniqueError, build_technique
from pac.techniques.backbone_dtype import parse_backbone_dtype
from pac.techniques.parallel_adapters import ParallelAdaptersModel

Batch = dict[str, torch.Tensor]


def prepared(
    model_dir: Path, data: Path, task: TaskSpec, dtype: str
) -> tuple[Any, TaskSpec, list[Any], Batch]:
    loaded = load_model(model_dir, dtype=dtype)
    task = resolve_task(task, data, DataFields())
    samples = load_samples(data, loaded, task, DataFields())
    return loaded, task, samples, collate(samples, pad_id(loaded), task=task)


def side_model(loaded: Any, task: TaskSpec) -> ParallelAdaptersModel:
    torch.manual_seed(0)  # the same side network whatever the backbone's dtype
    model = ParallelAdaptersModel(loaded.family, task)
    torch.nn.init.normal_(model.side.up.weight, std=0.1)  # non-zero: gradients reach the side
    return model


def side_gradients(model: ParallelAdaptersModel, ladder: Batch, batch: Batch) -> Batch:
    model.zero_grad(set_to_none=True)
    model.loss(model.forward_from_ladder(ladder, batch), batch).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def flat(grads: Batch, names: list[str]) -> torch.Tensor:
    return torch.cat([grads[name].flatten() for name in names])


CASES = [
    ("bert", TaskSpec("classification")),
    ("t5", TaskSpec("seq2seq")),  # the frozen LM head stays bf16 and is read through a cast
    ("t5", TaskSpec("classification", head="text")),
    ("llama", TaskSpec("causal-lm")),
]


@pytest.mark.parametrize(
    ("family", "task"), CASES, ids=[f"{f}-{t.kind}-{t.head}" for f, t in CASES]
)
def test_side_gradients_from_a_bf16_backbone_are_close_to_fp32(
    family: str,
    task: TaskSpec,
    tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path],
    tmp_path: Path,
) -> None:
    data = toy_data(task.kind, 12)
    grads: dict[str, Batch] = {}
    for dtype in ("float32", "bfloat16"):
        loaded, resolved, _, batch = prepared(tiny_model_dir(family), data, task, dtype)
        model = side_model(loaded, resolved)
        ladder = model.ladder(batch)
        assert {t.dtype for t in ladder.values()} == {parse_backbone_dtype(dtype)}
        grads[dtype] = side_gradients(model, ladder, batch)
        # What trains is float32 beside either backbone, and so are its gradients.
        assert {p.dtype for p in model.trainable_parameters()} == {torch.float32}
        assert {g.dtype for g in grads[dtype].values()} == {torch.float32}

    names = sorted(grads["float32"])
    assert names == sorted(grads["bfloat16"]) and len(names) > 10
    exact, rounded = flat(grads["float32"], names), flat(grads["bfloat16"], names)
    error = float((rounded - exact).norm() / exact.norm())
    # bf16 keeps 8 significant bits (unit roundoff u = 2**-9 ~ 0.002). Each hidden state is
    # a chain of ~10 rounded operations per block (rounded weights, matmul outputs, norms,
    # residual sums), over 2-4 blocks, and the gradient is smooth in the hidden states: a
    # relative error of a few u to ~15 u (measured 0.7%-3% over these cases). 0.05 = 25 u
    # leaves room for that and still fails a ladder read wrongly (an error of order 1).
    assert 0 < error < 0.05, f"relative gradient error {error:.3g}"
    assert float(torch.nn.functional.cosine_similarity(exact, rounded, dim=0)) > 0.998


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_bf16_backbone_trains_from_its_cache_as_from_itself(
    precision: str,
    tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path],
    tmp_path: Path,
) -> None:
    """A bf16 cache holds a bf16 backbone's hidden states exactly (fp16 too, in its normal
    range): the cache path (float32 on reading, rounded back to bf16 for the frozen final
    norm) gives the live path's gradients."""
    data = toy_data("seq2seq", 12)
    loaded, task, samples, batch = prepared(
        tiny_model_dir("t5"), data, TaskSpec("seq2seq"), "bf16"
    )
    model = side_model(loaded, task)
    assert model.cache_ladder.endswith(";dtype=bfloat16")
    live_ladder = model.ladder(batch)
    live = side_gradients(model, live_ladder, batch)
    key = CacheKey("model", "tokenizer", model.cache_ladder, precision)
    cache = LadderCache(ActivationCache(tmp_path / "cache", key), loaded.family, model.points)
    cache.store([s.fingerprint for s in samples], batch, live_ladder)
    cache.cache.flush()
    cached = side_gradients(model, cache.load(samples), batch)
    for name, grad in live.items():
        torch.testing.assert_close(cached[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def losses_on_one_batch(
    model_dir: Path, data: Path, task: TaskSpec, technique: str, steps: int = 30
) -> list[float]:
    loaded, task, _samples, batch = prepared(model_dir, data, task, "bf16")
    settings = {"reduction": 2} if technique == "parallel-adapters" else {}
    torch.manual_seed(0)
    model = build_technique(technique, loaded.family, task, settings)
    assert {p.dtype for p in model.trainable_parameters()} == {torch.float32}
    learning_rate = 3e-3 if technique == "parallel-adapters" else 1e-2
    optimizer, _ = make_optimizer(
        model.trainable_parameters(), learning_rate, total_steps=steps, warmup_ratio=0.0
    )
    model.eval()  # one fixed batch, no dropout noise
    losses = []
    for _ in range(steps):
        loss = model.loss(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


LEARNING = [
    ("bert", TaskSpec("classification"), "parallel-adapters"),
    ("t5", TaskSpec("classification"), "parallel-adapters"),
    ("t5", TaskSpec("seq2seq"), "parallel-adapters"),
    ("bert", TaskSpec("classification"), "lora"),
    ("t5", TaskSpec("seq2seq"), "lora"),
    ("bert", TaskSpec("classification"), "adapters"),
    ("t5", TaskSpec("classification"), "adapters"),
]


@pytest.mark.parametrize(
    ("family", "task", "technique"),
    LEARNING,
    ids=[f"{f}-{t.kind}-{tech}" for f, t, tech in LEARNING],
)
def test_a_bf16_backbone_learns(
    family: str,
    task: TaskSpec,
    technique: str,
    tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path],
) -> None:
    losses = losses_on_one_batch(tiny_model_dir(family), toy_data(task.kind, 8), task, technique)
    assert sum(losses[-3:]) / 3 < 0.9 * losses[0], losses


def test_pac_trains_with_a_bf16_backbone_and_predicts(
    tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`pac train --backbone-dtype bf16`: epoch 1 runs the bf16 backbone and caches it, later
    epochs train from the cache; the export records the dtype and `pac predict` loads the
    backbone with it and reproduces the last evaluation."""
    model, data, out = tiny_model_dir("bert"), toy_data("classification", 24), tmp_path / "out"
    args = ["--model", str(model), "--data", str(data), "--eval", str(data), "--out", str(out)]
    train = ["train", *args, "--task", "classification", "--epochs", "3", "--batch-size", "8"]
    assert main([*train, "--reduction", "2", "--lr", "3e-3", "--backbone-dtype", "bf16"]) == 0
    capsys.readouterr()
    records = [json.loads(line) for line in (out / "metrics.jsonl").open()]
    assert [r["phase"] for r in records] == ["backbone", "cache", "cache"]
    assert records[-1]["loss"] < records[0]["loss"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["settings"]["backbone_dtype"] == "bfloat16"

    predictions = tmp_path / "predictions.jsonl"
    predict = ["predict", "--model", str(model), "--adapters", str(out), "--data", str(data)]
    assert main([*predict, "--out", str(predictions)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metrics"]
    assert metrics["accuracy"] == pytest.approx(records[-1]["accuracy"])
    rows = [json.loads(line) for line in predictions.open()]
    assert len(rows) == 24 and {r["prediction"] for r in rows} <= {"neg", "pos"}

    # float32 runs the same trained side network beside a float32 backbone: the outputs
    # move by the backbone's rounding only.
    _, as_trained = load_tuned_model(model, out)
    _, in_fp32 = load_tuned_model(model, out, backbone_dtype="float32")
    assert as_trained.backbone_dtype == torch.bfloat16
    assert in_fp32.backbone_dtype == torch.float32
    loaded = load_model(model)
    task = resolve_task(as_trained.task, data, DataFields())
    batch = collate(load_samples(data, loaded, task, DataFields()), pad_id(loaded), task=task)
    with torch.no_grad():
        expected, got = in_fp32(batch), as_trained(batch)
    assert float((got - expected).norm() / expected.norm()) < 0.05


def test_the_cache_of_a_bf16_backbone_is_its_own(
    tiny_model_dir: Callable[[str], Path], toy_data: Callable[..., Path], tmp_path: Path
) -> None:
    """A float32 and a bfloat16 backbone never read each other's cache entries."""
    data = toy_data("classification", 8)
    namespaces = set()
    for settings in ({}, {"backbone_dtype": "bf16"}, {"backbone_dtype": "fp32"}):
        config = TrainConfig(
            model_dir=tiny_model_dir("bert"),
            train_path=data,
            task=TaskSpec("classification"),
            technique_settings={"reduction": 2, **settings},
            cache_dir=tmp_path / "cache",
            epochs=1,
        )
        trainer = Trainer(config)
        assert trainer.ladder_cache is not None
        assert trainer.loaded.family.model.dtype == config.backbone_dtype
        namespaces.add(trainer.ladder_cache.cache.key.namespace)
    assert len(namespaces) == 2  # "fp32" is float32's cache


def test_full_fine_tuning_refuses_a_bf16_backbone(
    tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    loaded = load_model(tiny_model_dir("bert"), dtype="bf16")
    with pytest.raises(TechniqueError, match=r"full fine-tuning .* needs it in float32"):
        build_technique("full", loaded.family, TaskSpec("classification", labels=("a", "b")))
    data = toy_data("classification", 8)
    args = ["train", "--model", str(tiny_model_dir("bert")), "--data", str(data)]
    args += ["--task", "classification", "--out", str(tmp_path / "out"), "--technique", "full"]
    assert main([*args, "--backbone-dtype", "bfloat16"]) == 2
    assert "needs it in float32" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown backbone dtype 'fp8'"):
        parse_backbone_dtype("fp8")
