"""read_examples: each format round trips; each bad input names file, line and field."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pac.data import DataError, Example
from pac.data.readers import read_examples

ROWS = [
    {"text": "a fine film", "text_pair": "it was good", "label": "fresh"},
    {"text": 'says "hi", then, leaves', "text_pair": "tab\tinside", "label": "rotten"},
    {"text": "two\nlines of text", "text_pair": "ünïcödé ✓", "label": "fresh"},
]


def write_table(path: Path, rows: list[dict[str, str]], delimiter: str) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)


def expected(path: Path, lines: list[int]) -> list[Example]:
    return [
        Example(r["text"], r["text_pair"], r["label"], str(path), line)
        for r, line in zip(ROWS, lines, strict=True)
    ]


def test_jsonl_round_trip_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    lines = [json.dumps(ROWS[0]), "", json.dumps(ROWS[1]), "   ", json.dumps(ROWS[2]), ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    assert read_examples(path) == expected(path, [1, 3, 5])


@pytest.mark.parametrize(("suffix", "delimiter"), [(".csv", ","), (".tsv", "\t")])
def test_table_round_trip_with_quoted_cells(tmp_path: Path, suffix: str, delimiter: str) -> None:
    path = tmp_path / f"train{suffix}"
    write_table(path, ROWS, delimiter)
    # Header on line 1; the third record starts on line 4 and its text spans two lines.
    assert read_examples(path) == expected(path, [2, 3, 4])


def test_record_after_a_multiline_cell_has_its_own_line(tmp_path: Path) -> None:
    path = tmp_path / "eval.csv"
    path.write_text('text,label\n"one\ntwo\nthree",x\nlater,y\n', encoding="utf-8")
    assert [e.line for e in read_examples(path)] == [2, 5]


def test_numbers_stay_numbers_and_pairs_are_optional(tmp_path: Path) -> None:
    path = tmp_path / "sts.jsonl"
    path.write_text('{"text": "a", "label": 3.5}\n{"text": "b", "label": 1}\n')
    examples = read_examples(path)
    assert [e.target for e in examples] == [3.5, 1]
    assert [e.text_pair for e in examples] == [None, None]


def test_fallback_field_names_sentence_and_target(tmp_path: Path) -> None:
    path = tmp_path / "glue.tsv"
    path.write_text("sentence\ttarget\nnice one\t1\n", encoding="utf-8")
    assert read_examples(path) == [Example("nice one", None, "1", str(path), 2)]


def test_explicit_field_names(tmp_path: Path) -> None:
    path = tmp_path / "mrpc.csv"
    path.write_text("s1,s2,y\nfirst,second,0\n", encoding="utf-8")
    got = read_examples(path, text_field="s1", pair_field="s2", target_field="y")
    assert got == [Example("first", "second", "0", str(path), 2)]


def test_targets_optional_when_not_required(tmp_path: Path) -> None:
    path = tmp_path / "lm.jsonl"
    path.write_text('{"text": "just text"}\n{"text": "more", "label": ""}\n')
    examples = read_examples(path, require_target=False)
    assert [e.target for e in examples] == [None, None]


def test_utf8_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("text,label\nhello,x\n".encode("utf-8-sig"))
    assert read_examples(path)[0].text == "hello"


def error_of(path: Path, content: str | None = None, **kwargs: object) -> str:
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        read_examples(path, **kwargs)  # type: ignore[arg-type]
    return str(caught.value)


def test_malformed_json_row(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    message = error_of(path, '{"text": "ok", "label": "a"}\n\n{"text": "x" "label": "b"}\n')
    assert message.startswith(f"{path}:3: not valid JSON: Expecting ',' delimiter")


def test_json_row_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    assert error_of(path, '["text", "label"]\n') == (
        f"{path}:1: expected a JSON object {{...}}, got list"
    )


def test_missing_field_lists_fields_present(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    content = '{"text": "a", "label": "x"}\n{"text": "b", "score": 2}\n'
    assert error_of(path, content) == (
        f"{path}:2: field 'label' or 'target' is missing (fields present: text, score)"
    )


def test_missing_text_column_in_csv(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    assert error_of(path, "review,label\ngood,x\n") == (
        f"{path}:2: field 'text' or 'sentence' is missing (fields present: review, label)"
    )


@pytest.mark.parametrize(
    ("content", "line", "field"),
    [("text,label\nok,x\n   ,y\n", 3, "text"), ("text,label\nok,\n", 2, "label")],
)
def test_empty_field(tmp_path: Path, content: str, line: int, field: str) -> None:
    path = tmp_path / "train.csv"
    assert error_of(path, content) == f"{path}:{line}: field '{field}' is empty"


def test_empty_pair_cell_means_no_pair(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    path.write_text('text,text_pair,label\nok,"",x\n', encoding="utf-8")
    assert read_examples(path)[0].text_pair is None


def test_text_that_is_not_a_string(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    assert error_of(path, '{"text": 12, "label": "x"}\n') == (
        f"{path}:1: field 'text' must be a string, got int 12"
    )


def test_target_that_is_a_list(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    assert error_of(path, '{"text": "a", "label": [1]}\n') == (
        f"{path}:1: field 'label' must be a string or a number, got list"
    )


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("eval.jsonl", "", "file is empty (no rows)"),
        ("eval.jsonl", "\n  \n", "file is empty (no rows)"),
        ("eval.tsv", "text\tlabel\n", "file is empty (no rows)"),
        ("eval.csv", "", "file is empty (no header row)"),
    ],
)
def test_empty_file(tmp_path: Path, name: str, content: str, reason: str) -> None:
    path = tmp_path / name
    assert error_of(path, content) == f"{path}: {reason}"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.jsonl"
    assert error_of(path) == f"{path}: data file does not exist; check the path"


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    assert error_of(path, "x") == (
        f"{path}: unsupported format '.parquet'; use .jsonl, .csv or .tsv, or give the data "
        "format"
    )


def test_row_with_too_many_values(tmp_path: Path) -> None:
    path = tmp_path / "train.csv"
    assert error_of(path, "text,label\nhello, world,x\n") == (
        f"{path}:2: has 3 values but the header names 2 columns (text, label); "
        "quote cells that contain ','"
    )


def test_duplicate_header_column(tmp_path: Path) -> None:
    path = tmp_path / "train.tsv"
    assert error_of(path, "text\ttext\nx\ty\n") == f"{path}:1: header names column 'text' twice"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\xe9,x\n".encode("latin-1"))
    assert error_of(path).startswith(f"{path}: is not UTF-8 text")


def test_a_data_format_reads_a_file_whatever_its_name(tmp_path: Path) -> None:
    path = tmp_path / "reviews.txt"
    path.write_text("text,label\ngood film,pos\nbad film,neg\n")
    with pytest.raises(DataError, match="give the data format"):
        read_examples(path)
    examples = read_examples(path, data_format="csv")
    assert [(e.text, e.target) for e in examples] == [("good film", "pos"), ("bad film", "neg")]
    tabbed = tmp_path / "reviews.data"
    tabbed.write_text("text\tlabel\ngood, really\tpos\n")
    assert read_examples(tabbed, data_format="TSV")[0].text == "good, really"
    with pytest.raises(DataError, match="unknown data format 'xml'"):
        read_examples(path, data_format="xml")
