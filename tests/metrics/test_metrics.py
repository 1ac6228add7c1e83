"""Metrics against hand-computed values and their edge cases."""

from __future__ import annotations

import math

import pytest

from pac.metrics import (
    accuracy,
    average_ranks,
    binary_f1,
    exact_match,
    macro_f1,
    metrics_for_task,
    pearson,
    spearman,
    token_accuracy,
)
from pac.tasks import TaskSpec

PRED = [1, 1, 0, 0, 1, 0]
REF = [1, 0, 0, 1, 1, 0]


def test_accuracy() -> None:
    assert accuracy(PRED, REF) == pytest.approx(4 / 6)


def test_binary_f1_by_hand() -> None:
    # class 1: tp 2, fp 1, fn 1 -> 2*2 / (2*2 + 1 + 1) = 2/3
    assert binary_f1(PRED, REF) == pytest.approx(2 / 3)
    # class 0 as positive: tp 2, fp 1, fn 1 -> 2/3 as well
    assert binary_f1(PRED, REF, positive=0) == pytest.approx(2 / 3)


def test_macro_f1_three_classes_by_hand() -> None:
    pred = [0, 1, 2, 2, 1, 0, 2]
    ref = [0, 1, 1, 2, 2, 2, 2]
    # class 0: tp 1 fp 1 fn 0 -> 2/3; class 1: tp 1 fp 1 fn 1 -> 1/2;
    # class 2: tp 2 fp 1 fn 2 -> 4/7
    assert macro_f1(pred, ref) == pytest.approx((2 / 3 + 1 / 2 + 4 / 7) / 3)


def test_f1_when_the_positive_class_is_never_predicted() -> None:
    assert binary_f1([0, 0, 0], [1, 0, 0]) == 0.0
    assert macro_f1([0, 0, 0], [1, 0, 0]) == pytest.approx((0.8 + 0.0) / 2)


def test_pearson_by_hand() -> None:
    # dx = -1, 0, 1; dy = -2, 2, 0: sum dx*dy = 2, sum dx^2 = 2, sum dy^2 = 8 -> 2 / 4
    assert pearson([1, 2, 3], [1, 5, 3]) == pytest.approx(0.5)
    assert pearson([1, 2, 3], [6, 4, 2]) == pytest.approx(-1.0)


def test_average_ranks_with_ties() -> None:
    assert average_ranks([10, 20, 20, 5, 20]).tolist() == [2.0, 4.0, 4.0, 1.0, 4.0]


def test_spearman_with_ties_by_hand() -> None:
    # ranks x: 1, 2.5, 2.5, 4; ranks y: 1, 2, 3, 4
    # dx = -1.5, 0, 0, 1.5; dy = -1.5, -0.5, 0.5, 1.5 -> 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert spearman([1, 2, 3, 4], [1, 10, 100, 1000]) == pytest.approx(1.0)


@pytest.mark.parametrize("metric", [pearson, spearman])
def test_correlation_of_a_constant_is_zero(metric: object) -> None:
    assert callable(metric)
    assert metric([0.1, 0.1, 0.1], [1.0, 2.0, 3.0]) == 0.0
    assert metric([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) == 0.0
    assert metric([1.0], [2.0]) == 0.0


def test_length_mismatch_and_empty_inputs() -> None:
    with pytest.raises(ValueError, match="3 predictions but 2 references"):
        accuracy([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="no predictions"):
        pearson([], [])


def test_exact_match_and_token_accuracy() -> None:
    assert exact_match(["bonjour ", "oui"], ["bonjour", "non"]) == 0.5
    assert token_accuracy([[5, 6, 7], [1, 2, 3]], [[5, 0, -100], [1, -100, -100]]) == (
        pytest.approx(2 / 3)
    )
    with pytest.raises(ValueError, match="every label is -100"):
        token_accuracy([[1]], [[-100]])


def test_metrics_for_classification() -> None:
    two = metrics_for_task(TaskSpec("classification", ("fresh", "rotten")), PRED, REF)
    assert two == pytest.approx({"accuracy": 4 / 6, "f1": 2 / 3, "macro_f1": 2 / 3})
    three = metrics_for_task(TaskSpec("classification", ("a", "b", "c")), [0, 2, 2], [0, 1, 2])
    # class 0: 1; class 1: 0; class 2: tp 1 fp 1 -> 2/3; macro = 5/9, also the f1
    assert three == pytest.approx({"accuracy": 2 / 3, "f1": 5 / 9, "macro_f1": 5 / 9})


def test_metrics_for_regression() -> None:
    got = metrics_for_task(TaskSpec("regression"), [1, 2, 3, 4], [1, 3, 2, 10])
    # dx = -1.5, -.5, .5, 1.5; dy = -3, -1, -2, 6 -> pearson 13 / sqrt(5 * 50);
    # ranks of y 1, 3, 2, 4 -> spearman 4 / 5
    p = 13 / math.sqrt(250)
    assert got == pytest.approx({"pearson": p, "spearman": 0.8, "pearson_spearman": (p + 0.8) / 2})


@pytest.mark.parametrize("kind", ["seq2seq", "causal-lm"])
def test_metrics_for_generation(kind: str) -> None:
    task = TaskSpec(kind)  # type: ignore[arg-type]
    assert metrics_for_task(task, ["le monde", "x"], ["le monde", "y"]) == {"exact_match": 0.5}
