"""Evaluation metrics from a model's outputs over an evaluation set."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from pac.metrics import metrics_for_task, token_accuracy
from pac.tasks import TaskSpec
from pac.techniques.base import TechniqueError, TunedModel


def label_first_tokens(task: TaskSpec, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The first target token of each class name; a text-head classifier predicts the class
    whose first token scores highest at the decoder's first position, so they must differ."""
    firsts = [int(tokenizer(text_target=name)["input_ids"][0]) for name in task.labels]
    if len(set(firsts)) != len(firsts):
        raise TechniqueError(
            f"the labels {list(task.labels)} share a first token; a text head cannot tell "
            "them apart: rename them or use --head linear"
        )
    return firsts


@dataclass
class Evaluation:
    metrics: dict[str, float]
    predictions: list[float] = field(default_factory=list)


def evaluate_outputs(
    model: TunedModel,
    parts: Sequence[tuple[dict[str, torch.Tensor], torch.Tensor]],
    tokenizer: PreTrainedTokenizerBase,
) -> Evaluation:
    """``parts``: (batch, outputs) pairs. Returns ``eval_loss`` and the task's metrics:
    accuracy/F1, Pearson/Spearman, or teacher-forced ``token_accuracy`` for text targets."""
    task = model.task
    losses = [
        float(model.loss(outputs, batch)) * len(batch["sample_index"]) for batch, outputs in parts
    ]
    count = sum(len(batch["sample_index"]) for batch, _ in parts)
    metrics = {"eval_loss": sum(losses) / max(1, count)}
    if task.kind in ("seq2seq", "causal-lm"):
        predicted, labels = [], []
        for batch, outputs in parts:
            ids, gold = outputs.argmax(dim=-1), batch["labels"]
            if task.kind == "causal-lm":
                ids, gold = ids[:, :-1], gold[:, 1:]
            predicted.append(ids.flatten())
            labels.append(gold.flatten())
        metrics["token_accuracy"] = token_accuracy(
            torch.cat(predicted).numpy(), torch.cat(labels).numpy()
        )
        return Evaluation(metrics)
    firsts = label_first_tokens(task, tokenizer) if task.generates_text else None
    reference_key = "class_labels" if task.generates_text else "labels"
    predictions: list[float] = []
    references: list[float] = []
    for batch, outputs in parts:
        predictions += model.head.predict(outputs, firsts).tolist()
        references += batch[reference_key].tolist()
    metrics.update(metrics_for_task(task, predictions, references))
    return Evaluation(metrics, predictions)
