"""Every model family x technique trains: a few steps on one batch of a learnable task
bring its loss well down (the backbone-frozen techniques included)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from pac.data.collate import collate
from pac.engine.dataset import DataFields, load_samples, pad_id, resolve_task
from pac.engine.loading import load_model
from pac.engine.schedule import make_optimizer
from pac.tasks import TaskSpec
from pac.techniques import build_technique

FAMILIES = ["bert", "t5", "bart", "gpt2", "llama", "qwen2"]
TECHNIQUES = ["parallel-adapters", "full", "lora", "adapters"]
LEARNING_RATES = {"parallel-adapters": 3e-3, "full": 3e-3, "lora": 1e-2, "adapters": 1e-2}
# Tiny models are 32 wide: r = 2 keeps the side network 16 wide.
SETTINGS: dict[str, dict[str, Any]] = {"parallel-adapters": {"reduction": 2}}


def losses_on_one_batch(
    model_dir: Path, data: Path, task: TaskSpec, technique: str, steps: int = 40
) -> list[float]:
    torch.manual_seed(0)
    loaded = load_model(model_dir)
    task = resolve_task(task, data, DataFields())
    samples = load_samples(data, loaded, task, DataFields())
    batch = collate(samples, pad_id(loaded), task=task)
    model = build_technique(technique, loaded.family, task, SETTINGS.get(technique, {}))
    optimizer, _ = make_optimizer(
        model.trainable_parameters(),
        LEARNING_RATES[technique],
        total_steps=steps,
        warmup_ratio=0.0,
    )
    # Dropout off: one fixed batch then shows the gradient path alone, without noise.
    model.eval()
    losses = []
    for _ in range(steps):
        loss = model.loss(model(batch), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def went_down(losses: list[float]) -> bool:
    """The last steps' mean loss is clearly below the first step's (one batch, so a model
    that learns at all overfits it; a broken gradient path leaves the loss flat)."""
    return sum(losses[-3:]) / 3 < 0.9 * losses[0]


@pytest.mark.parametrize("technique", TECHNIQUES)
@pytest.mark.parametrize("family", FAMILIES)
def test_classification_loss_decreases(
    family: str,
    technique: str,
    tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path],
) -> None:
    losses = losses_on_one_batch(
        tiny_model_dir(family),
        toy_data("classification", 8),
        TaskSpec("classification"),
        technique,
    )
    assert went_down(losses), losses


GENERATIVE = [
    ("t5", TaskSpec("seq2seq"), "seq2seq"),
    ("bart", TaskSpec("seq2seq"), "seq2seq"),
    ("t5", TaskSpec("classification", head="text"), "classification"),
    ("bart", TaskSpec("regression"), "regression"),
    ("gpt2", TaskSpec("causal-lm"), "causal-lm"),
    ("llama", TaskSpec("causal-lm"), "causal-lm"),
    ("bert", TaskSpec("regression"), "regression"),
]


@pytest.mark.parametrize("technique", ["parallel-adapters", "lora"])
@pytest.mark.parametrize(
    ("family", "task", "kind"), GENERATIVE, ids=[f"{f}-{k}-{t.head}" for f, t, k in GENERATIVE]
)
def test_other_tasks_loss_decreases(
    family: str,
    task: TaskSpec,
    kind: str,
    technique: str,
    tiny_model_dir: Callable[[str], Path],
    toy_data: Callable[..., Path],
) -> None:
    losses = losses_on_one_batch(tiny_model_dir(family), toy_data(kind, 8), task, technique)
    assert went_down(losses), losses
