"""One row of training or evaluation data, as read from a file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Example:
    """A text (or text pair) and its target, with where it came from.

    ``target`` is a string or a number as the file gave it (a JSON number stays a number,
    a CSV cell is a string); ``None`` when the row has no target (prediction input, or a
    causal-LM row that is its own target). ``source`` is the file path and ``line`` the
    1-based line number of the row (for a CSV record that spans lines: its first line).
    """

    text: str
    text_pair: str | None
    target: str | float | None
    source: str
    line: int
