"""Read examples from JSONL, CSV or TSV files.

Formats, chosen by the file's extension:

- ``.jsonl``: one JSON object per line; blank lines are skipped.
- ``.csv`` / ``.tsv``: a header row naming the columns, then one record per row (a quoted
  cell may span lines; the example's line is the record's first line).

Field names: the text is read from ``text_field`` (default ``"text"``), the optional second
text of a pair from ``pair_field`` (default ``"text_pair"``) and the target from
``target_field`` (default ``"label"``). When a default name is absent from a row, a common
alternative is accepted: ``"sentence"`` for the text and ``"target"`` for the target
(names given explicitly are never substituted). An empty pair cell means "no pair"; an
empty target with ``require_target=False`` means "no target".

Files are read as UTF-8 (a byte-order mark is ignored). Every problem is a ``DataError``
naming the file, the line and the field.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

from pac.data.errors import at
from pac.data.examples import Example

SUPPORTED_SUFFIXES = (".jsonl", ".csv", ".tsv")
# Alternatives accepted when the default field name is absent (see the module docstring).
_FALLBACKS = {"text": ("sentence",), "label": ("target",)}

Row = Mapping[str, object]


def read_examples(
    path: str | Path,
    *,
    text_field: str = "text",
    pair_field: str = "text_pair",
    target_field: str = "label",
    require_target: bool = True,
    data_format: str = "",
) -> list[Example]:
    """Read every row of ``path`` into an ``Example``.

    ``require_target=False`` reads rows without a target (``Example.target`` is None), for
    prediction or for causal-LM text. ``data_format`` (``jsonl``, ``csv`` or ``tsv``) says
    how the file is written whatever its name; by default its extension says. Raises
    ``DataError`` for a missing or empty file, an unsupported format and any bad row.
    """
    path = Path(path)
    source = str(path)
    if data_format:
        suffix = f".{data_format.lower().lstrip('.')}"
        if suffix not in SUPPORTED_SUFFIXES:
            raise at(source, None, f"unknown data format {data_format!r}; use jsonl, csv or tsv")
    else:
        suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        shown = suffix or "(no extension)"
        raise at(
            source,
            None,
            f"unsupported format '{shown}'; use .jsonl, .csv or .tsv, or give the data format",
        )
    if not path.exists():
        raise at(source, None, "data file does not exist; check the path")
    if not path.is_file():
        raise at(source, None, "is not a file; give the path of a .jsonl, .csv or .tsv file")
    rows = _jsonl_rows(path) if suffix == ".jsonl" else _table_rows(path, suffix)
    fields = _Fields(text_field, pair_field, target_field, require_target)
    examples = [fields.example(row, source, line) for line, row in rows]
    if not examples:
        raise at(source, None, "file is empty (no rows)")
    return examples


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        reason = f"is not UTF-8 text ({error.reason} at byte {error.start})"
        raise at(str(path), None, reason) from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Row]]:
    source = str(path)
    # Split on "\n" only: str.splitlines would also split inside strings at U+2028 etc.
    for number, raw in enumerate(_read_text(path).split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as error:
            reason = f"not valid JSON: {error.msg} (column {error.colno})"
            raise at(source, number, reason) from None
        if not isinstance(row, dict):
            kind = type(row).__name__
            raise at(source, number, f"expected a JSON object {{...}}, got {kind}")
        yield number, row


def _table_rows(path: Path, suffix: str) -> Iterator[tuple[int, Row]]:
    source = str(path)
    delimiter = "\t" if suffix == ".tsv" else ","
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter=delimiter)
    header: list[str] | None = None
    try:
        for record in reader:
            # The record started on the line after the previous record ended.
            end_line = reader.line_num
            first_line = end_line - _newlines_in(record)
            if not record or all(not cell.strip() for cell in record):
                continue
            if header is None:
                header = [name.strip() for name in record]
                _check_header(header, source, first_line)
                continue
            if len(record) != len(header):
                separator = "a tab" if suffix == ".tsv" else "','"
                raise at(
                    source,
                    first_line,
                    f"has {len(record)} values but the header names {len(header)} columns "
                    f"({', '.join(header)}); quote cells that contain {separator}",
                )
            yield first_line, dict(zip(header, record, strict=True))
    except csv.Error as error:
        raise at(source, reader.line_num, f"not valid {suffix[1:].upper()}: {error}") from None
    if header is None:
        raise at(source, None, "file is empty (no header row)")


def _newlines_in(record: list[str]) -> int:
    # A quoted cell that spans lines makes the reader's line count run ahead of the
    # record's first line by the number of newlines inside its cells.
    return sum(cell.count("\n") for cell in record)


def _check_header(header: list[str], source: str, line: int) -> None:
    seen: set[str] = set()
    for name in header:
        if not name:
            raise at(source, line, "header has an empty column name")
        if name in seen:
            raise at(source, line, f"header names column '{name}' twice")
        seen.add(name)


class _Fields:
    """Which fields of a row hold the text, the pair and the target."""

    def __init__(self, text: str, pair: str, target: str, require_target: bool) -> None:
        self.text = text
        self.pair = pair
        self.target = target
        self.require_target = require_target

    def example(self, row: Row, source: str, line: int) -> Example:
        text_name = _present_name(row, self.text)
        if text_name is None:
            raise at(source, line, _missing(self.text, row))
        text = _text(row, text_name, source, line)
        pair = _text(row, self.pair, source, line) if _has_value(row, self.pair) else None
        target_name = _present_name(row, self.target)
        target: str | float | None = None
        if target_name is not None and _has_value(row, target_name):
            target = _target(row, target_name, source, line)
        elif self.require_target:
            if target_name is None:
                raise at(source, line, _missing(self.target, row))
            raise at(source, line, f"field '{target_name}' is empty")
        return Example(text=text, text_pair=pair, target=target, source=source, line=line)


def _present_name(row: Row, name: str) -> str | None:
    if name in row:
        return name
    return next((alt for alt in _FALLBACKS.get(name, ()) if alt in row), None)


def _missing(name: str, row: Row) -> str:
    present = ", ".join(str(key) for key in row) or "none"
    also = "".join(f" or '{alt}'" for alt in _FALLBACKS.get(name, ()))
    return f"field '{name}'{also} is missing (fields present: {present})"


def _has_value(row: Row, name: str) -> bool:
    value = row.get(name)
    return value is not None and not (isinstance(value, str) and not value.strip())


def _text(row: Row, name: str, source: str, line: int) -> str:
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise at(source, line, f"field '{name}' is empty")
    if not isinstance(value, str):
        kind = type(value).__name__
        raise at(source, line, f"field '{name}' must be a string, got {kind} {value!r}")
    return value


def _target(row: Row, name: str, source: str, line: int) -> str | float:
    value = row[name]
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool | int | float):
        return value
    kind = type(value).__name__
    raise at(source, line, f"field '{name}' must be a string or a number, got {kind}")
