"""Learnable toy data sets for engine tests, written as the files users would give."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

POSITIVE = ["good", "great", "fine", "nice", "happy"]
NEGATIVE = ["bad", "awful", "poor", "sad", "grim"]
FILLER = ["the", "film", "was", "a", "story", "of", "it", "and", "very", "day", "with"]


def toy_rows(count: int, kind: str, seed: int = 0) -> list[dict[str, object]]:
    """Rows whose target follows from the text: a sentiment word decides the class."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    for index in range(count):
        positive = index % 2 == 0
        cue = rng.choice(POSITIVE if positive else NEGATIVE)
        words = rng.sample(FILLER, rng.randint(2, 6))
        words.insert(rng.randint(0, len(words)), cue)
        text = " ".join(words)
        if kind == "classification":
            rows.append({"text": text, "label": "pos" if positive else "neg"})
        elif kind == "regression":
            rows.append({"text": text, "label": 1.0 if positive else -1.0})
        elif kind == "seq2seq":
            rows.append({"text": text, "label": cue})
        else:  # causal-lm: plain text to model
            rows.append({"text": f"{text} . {cue} {cue}"})
    return rows


@pytest.fixture
def toy_data(tmp_path: Path) -> Callable[..., Path]:
    """``toy_data("classification", 48)`` -> a JSONL file of learnable rows."""

    def write(kind: str, count: int = 48, seed: int = 0, name: str | None = None) -> Path:
        path = tmp_path / (name or f"{kind}-{count}-{seed}.jsonl")
        path.write_text("".join(json.dumps(row) + "\n" for row in toy_rows(count, kind, seed)))
        return path

    return write
