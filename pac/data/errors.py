"""The one error type of the data pipeline."""

from __future__ import annotations


class DataError(ValueError):
    """A data file or one of its rows cannot be used.

    The message names the file, the 1-based line and the field, e.g.
    ``train.jsonl:17: field 'label' is missing (fields present: text, score)``.
    """


def at(source: str, line: int | None, message: str) -> DataError:
    """A ``DataError`` located at ``source:line`` (or at the file when ``line`` is None)."""
    where = source if line is None else f"{source}:{line}"
    return DataError(f"{where}: {message}")
