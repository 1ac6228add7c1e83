"""What the user wants the model to learn: the task, as a value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

TaskKind = Literal["classification", "regression", "seq2seq", "causal-lm"]
TASK_KINDS: tuple[TaskKind, ...] = ("classification", "regression", "seq2seq", "causal-lm")
# How an encoder-decoder model classifies: a linear head on the decoder's first position,
# or text-to-text (the label's name is the target sequence; the best-scoring name wins).
HeadKind = Literal["linear", "text"]


@dataclass(frozen=True)
class TaskSpec:
    """The task of a job.

    ``labels`` are the class names of a classification task, index = class id; they are
    read from the training data (sorted) unless given.
    """

    kind: TaskKind
    labels: tuple[str, ...] = ()
    head: HeadKind = "linear"
    max_length: int = 128
    max_target_length: int = 32

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"unknown task {self.kind!r}; choose one of {', '.join(TASK_KINDS)}")
        if self.head not in ("linear", "text"):
            raise ValueError(f"unknown head {self.head!r}; choose 'linear' or 'text'")
        if self.kind == "classification" and self.labels and len(self.labels) < 2:
            raise ValueError("a classification task needs at least two labels")

    @property
    def num_labels(self) -> int:
        """Outputs of a linear head: classes for classification, 1 for regression."""
        return 1 if self.kind == "regression" else len(self.labels)

    @property
    def generates_text(self) -> bool:
        """True when the loss is over target tokens (LM head), not a linear head."""
        return self.kind in ("seq2seq", "causal-lm") or (
            self.kind == "classification" and self.head == "text"
        )
