"""Where a cache-phase step's time goes, part by part.

A :class:`StepClock` sums wall-clock seconds under named parts (``ladder``: reading the
rows' cached hidden states; ``compute``: the side network's forward and backward;
``send`` and ``wait``: the gradient all-reduce's sends and its time blocked on peers,
which includes waiting for the slowest device's compute, or ``exchange`` for both where the
transport sends and receives at once (the agents' wire); ``optimizer``: the step and
zeroing; ``checkpoint``). The agent exports each step's parts as a histogram, so a
benchmark can say where a step goes without a profiler.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class StepClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Add the time spent inside the ``with`` block to part ``name``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def take(self) -> dict[str, float]:
        """The parts summed so far; starts over."""
        taken, self.seconds = self.seconds, {}
        return taken
