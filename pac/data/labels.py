"""Targets as the model needs them: class ids for classification, floats for regression.

Class names are strings. A target read as a number or a boolean (a JSON ``1``, ``true``)
is named by its text: ints as ``str(n)``, integral floats as the int (``1.0`` -> ``"1"``, so
JSON and CSV files agree), booleans as ``"true"`` / ``"false"`` (their JSON spelling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pac.data.errors import DataError, at
from pac.data.examples import Example


def label_name(target: str | float) -> str:
    """The class name of one target value (see the module docstring)."""
    if isinstance(target, bool):
        return "true" if target else "false"
    if isinstance(target, float) and target.is_integer():
        return str(int(target))
    return str(target)


def label_vocabulary(examples: Sequence[Example], *, field: str = "label") -> tuple[str, ...]:
    """The sorted class names found in ``examples`` (index = class id).

    Names are sorted as integers when every name is an integer (``"2"`` before ``"10"``),
    else as strings. Raises ``DataError`` for an example without a target and when fewer
    than two classes are present.
    """
    names = {label_name(_target_of(example, field)) for example in examples}
    if not examples:
        raise DataError("no examples to read class labels from")
    if len(names) < 2:
        only = ", ".join(sorted(names))
        raise DataError(
            f"{examples[0].source}: classification needs at least two labels in field "
            f"'{field}', found only: {only}"
        )
    if all(_is_int(name) for name in names):
        return tuple(sorted(names, key=int))
    return tuple(sorted(names))


def class_ids(
    examples: Sequence[Example], labels: Sequence[str], *, field: str = "label"
) -> list[int]:
    """The class id of each example's target; ``labels`` are the training labels.

    Raises ``DataError`` naming the file, line and field for a target that is not one of
    ``labels`` (an evaluation label never seen in training).
    """
    index = {name: i for i, name in enumerate(labels)}
    ids = []
    for example in examples:
        name = label_name(_target_of(example, field))
        if name not in index:
            known = ", ".join(labels)
            raise at(
                example.source,
                example.line,
                f"field '{field}' has label {name!r}, which is not a training label "
                f"(known labels: {known})",
            )
        ids.append(index[name])
    return ids


def regression_values(examples: Sequence[Example], *, field: str = "label") -> list[float]:
    """Each example's target as a finite float; ``DataError`` for any other value."""
    values = []
    for example in examples:
        target = _target_of(example, field)
        try:
            if isinstance(target, bool):
                raise ValueError
            value = float(target)
        except ValueError:
            raise at(
                example.source,
                example.line,
                f"field '{field}' must be a number for regression, got {target!r}",
            ) from None
        if not math.isfinite(value):
            raise at(example.source, example.line, f"field '{field}' must be finite, got {value}")
        values.append(value)
    return values


def _target_of(example: Example, field: str) -> str | float:
    if example.target is None:
        raise at(example.source, example.line, f"field '{field}' is missing: this task needs it")
    return example.target


def _is_int(name: str) -> bool:
    try:
        int(name)
    except ValueError:
        return False
    return True
