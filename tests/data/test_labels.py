"""Class names, class ids and regression values, with errors that name file/line/field."""

from __future__ import annotations

import pytest

from pac.data import DataError, Example
from pac.data.labels import class_ids, label_name, label_vocabulary, regression_values


def examples(*targets: str | float | None, source: str = "train.jsonl") -> list[Example]:
    return [Example(f"t{i}", None, t, source, i + 1) for i, t in enumerate(targets)]


def test_vocabulary_is_sorted_and_unique() -> None:
    assert label_vocabulary(examples("rotten", "fresh", "rotten")) == ("fresh", "rotten")


def test_integer_names_sort_as_numbers() -> None:
    assert label_vocabulary(examples(10, "2", 1, 2.0)) == ("1", "2", "10")


@pytest.mark.parametrize(
    ("target", "name"), [(True, "true"), (False, "false"), (3, "3"), (2.0, "2"), (0.5, "0.5")]
)
def test_label_names_of_numbers_and_booleans(target: str | float, name: str) -> None:
    assert label_name(target) == name


def test_json_and_csv_labels_agree() -> None:
    labels = label_vocabulary(examples(0, 1))
    assert class_ids(examples("1", "0", source="eval.csv"), labels) == [1, 0]


def test_unknown_eval_label_names_file_line_field_and_known_labels() -> None:
    with pytest.raises(DataError) as caught:
        class_ids(examples("fresh", "meh", source="eval.jsonl"), ("fresh", "rotten"))
    assert str(caught.value) == (
        "eval.jsonl:2: field 'label' has label 'meh', which is not a training label "
        "(known labels: fresh, rotten)"
    )


def test_one_class_is_not_a_classification() -> None:
    with pytest.raises(DataError, match="at least two labels in field 'label', found only: a"):
        label_vocabulary(examples("a", "a"))


def test_missing_target_is_an_error() -> None:
    with pytest.raises(DataError, match=r"^train.jsonl:2: field 'label' is missing"):
        label_vocabulary(examples("a", None))


def test_regression_values_parse_strings_and_numbers() -> None:
    assert regression_values(examples("1.5", 2, " -3e-1 ")) == [1.5, 2.0, -0.3]


@pytest.mark.parametrize("bad", ["high", "nan", True])
def test_non_numeric_regression_target(bad: str | bool) -> None:
    with pytest.raises(DataError) as caught:
        regression_values(examples(1.0, bad, source="sts.csv"))
    assert str(caught.value).startswith("sts.csv:2: field 'label' must be")
