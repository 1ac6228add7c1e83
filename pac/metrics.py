"""Evaluation metrics: accuracy and F1, Pearson and Spearman, exact match.

Plain Python + numpy (no scipy, no sklearn). Conventions:

- A correlation is undefined when either side is constant (or has fewer than two
  values); it is reported as 0.0, not NaN, so metrics stay valid JSON and comparable
  ("no measurable relation").
- ``binary_f1`` takes class id 1 as the positive class (for sorted labels ``("0", "1")``
  that is ``"1"``; for ``("fresh", "rotten")`` it is ``"rotten"``).
- ``macro_f1`` averages the per-class F1 over the classes that occur in the references or
  the predictions (as scikit-learn does without ``labels=``); a class with no true
  positives has F1 0.
- Generation (seq2seq, causal-lm) is scored by exact match of the generated text with the
  reference after stripping surrounding whitespace; ``token_accuracy`` scores
  teacher-forced token predictions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from pac.tasks import TaskSpec

IGNORE_INDEX = -100


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Fraction of predictions equal to their reference."""
    pred, ref = _pair(predictions, references)
    return float(np.mean(pred == ref))


def binary_f1(predictions: Sequence[int], references: Sequence[int], positive: int = 1) -> float:
    """F1 of the ``positive`` class: 2 tp / (2 tp + fp + fn); 0.0 when it is never seen."""
    pred, ref = _pair(predictions, references)
    return _f1(pred, ref, positive)


def macro_f1(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Unweighted mean of per-class F1 over the classes present in either sequence."""
    pred, ref = _pair(predictions, references)
    classes = np.union1d(pred, ref)
    return float(np.mean([_f1(pred, ref, int(c)) for c in classes]))


def pearson(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Pearson correlation; 0.0 when either side is constant."""
    pred, ref = _pair(predictions, references, dtype=np.float64)
    return _correlation(pred, ref)


def spearman(predictions: Sequence[float], references: Sequence[float]) -> float:
    """Spearman rank correlation (Pearson of the ranks, ties get their average rank);
    0.0 when either side is constant."""
    pred, ref = _pair(predictions, references, dtype=np.float64)
    return _correlation(average_ranks(pred), average_ranks(ref))


def average_ranks(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """1-based ranks of ``values``; tied values share the mean of their ranks."""
    array = np.asarray(values, dtype=np.float64)
    order = np.argsort(array, kind="stable")
    sorted_values = array[order]
    ranks = np.empty(len(array), dtype=np.float64)
    start = 0
    while start < len(array):
        end = start
        while end + 1 < len(array) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of generated texts equal to their reference (surrounding whitespace
    ignored)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    hits = sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True))
    return hits / len(predictions)


def token_accuracy(predicted_ids: npt.ArrayLike, label_ids: npt.ArrayLike) -> float:
    """Fraction of target tokens predicted right; positions labelled -100 are skipped.

    ``predicted_ids`` and ``label_ids`` have the same shape, e.g. [batch, target_len]
    (already aligned: for a causal LM, shift before calling).
    """
    pred = np.asarray(predicted_ids)
    labels = np.asarray(label_ids)
    if pred.shape != labels.shape:
        raise ValueError(f"predictions have shape {pred.shape}, labels {labels.shape}")
    scored = labels != IGNORE_INDEX
    if not scored.any():
        raise ValueError("no target tokens to score (every label is -100)")
    return float(np.mean(pred[scored] == labels[scored]))


def metrics_for_task(
    task: TaskSpec,
    predictions: Sequence[int] | Sequence[float] | Sequence[str],
    references: Sequence[int] | Sequence[float] | Sequence[str],
) -> dict[str, float]:
    """The metrics reported for ``task``.

    - classification (class ids): ``accuracy``, ``f1`` (binary F1 of class 1 for two
      classes, macro F1 otherwise) and ``macro_f1``;
    - regression (values): ``pearson``, ``spearman`` and their mean ``pearson_spearman``;
    - seq2seq / causal-lm (generated texts): ``exact_match``.
    """
    if task.kind == "classification":
        pred_ids = [int(p) for p in predictions]
        ref_ids = [int(r) for r in references]
        classes = len(task.labels) or len(set(pred_ids) | set(ref_ids))
        macro = macro_f1(pred_ids, ref_ids)
        return {
            "accuracy": accuracy(pred_ids, ref_ids),
            "f1": binary_f1(pred_ids, ref_ids) if classes == 2 else macro,
            "macro_f1": macro,
        }
    if task.kind == "regression":
        pred_values = [float(p) for p in predictions]
        ref_values = [float(r) for r in references]
        p = pearson(pred_values, ref_values)
        s = spearman(pred_values, ref_values)
        return {"pearson": p, "spearman": s, "pearson_spearman": (p + s) / 2}
    return {"exact_match": exact_match([str(p) for p in predictions], [str(r) for r in references])}


def _pair(
    predictions: Sequence[float], references: Sequence[float], dtype: type = np.int64
) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.generic]]:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if len(predictions) == 0:
        raise ValueError("no predictions to score")
    return np.asarray(predictions, dtype=dtype), np.asarray(references, dtype=dtype)


def _f1(pred: npt.NDArray[np.generic], ref: npt.NDArray[np.generic], positive: int) -> float:
    tp = int(np.sum((pred == positive) & (ref == positive)))
    fp = int(np.sum((pred == positive) & (ref != positive)))
    fn = int(np.sum((pred != positive) & (ref == positive)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def _correlation(x: npt.NDArray[np.generic], y: npt.NDArray[np.generic]) -> float:
    # Test constancy directly: x - x.mean() of a constant float array need not be 0.
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return 0.0
    dx = x - x.mean()
    dy = y - y.mean()
    denominator = float(np.sqrt(np.sum(dx * dx) * np.sum(dy * dy)))
    if denominator == 0.0:
        return 0.0
    # Clip: rounding can push a perfect correlation a hair past 1.
    return float(np.clip(np.sum(dx * dy) / denominator, -1.0, 1.0))
