"""Profiles this agent measured, kept to answer the same request again without the model.

A household fine-tunes the same model again and again; its blocks take the same time on
the same device. A request may accept a profile up to ``max_age_s`` old (the coordinator's
``--profile-max-age``): the same request (model directory, blocks, shapes, what to time)
on the same model files (names, sizes and modification times unchanged) is answered from
the memo, and the reply says how old it is. A changed file, another request, or an older
profile is measured again.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.profiling import ProfileResult

# The distinct requests kept (a job asks one per agent; a few models in turn fit).
MEMO_SIZE = 16


@dataclass(frozen=True)
class ProfileAsk:
    """What a Profile request asks to time (see agent/profiling.profile_layers)."""

    model_dir: Path
    start: int
    end: int
    batch_size: int
    seq_len: int
    repeats: int
    side_network: bool = False
    second_batch_size: int = 0
    backward_technique: str = ""
    packed_backbone: bool = False
    # Agents of this one's CPU pool measuring at the same time (ProfileRequest.pool_agents)
    pool_agents: int = 0


Stamp = tuple[tuple[str, int, int], ...]


def model_files_stamp(model_dir: Path) -> Stamp:
    """Name, size and modification time of every file directly in ``model_dir`` (weights,
    config, tokenizer): any change measures the model again."""
    stamp = []
    with os.scandir(model_dir) as entries:
        for entry in entries:
            if entry.is_file():  # follows symbolic links: a re-pointed link is a change
                info = entry.stat()
                stamp.append((entry.name, info.st_size, info.st_mtime_ns))
    return tuple(sorted(stamp))


class ProfileMemo:
    """Measured profiles by request and model files, with the time each was measured."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, size: int = MEMO_SIZE):
        self._clock = clock
        self._size = size
        self._lock = threading.Lock()
        self._kept: dict[tuple[ProfileAsk, Stamp], tuple[float, ProfileResult]] = {}

    def profile(
        self, ask: ProfileAsk, max_age_s: float, measure: Callable[[ProfileAsk], ProfileResult]
    ) -> tuple[ProfileResult, float]:
        """The profile ``ask`` asks for and its age in seconds: a kept one at most
        ``max_age_s`` old for the same model files, else ``measure(ask)`` (age 0), kept."""
        try:
            key = (ask, model_files_stamp(ask.model_dir))
        except OSError:  # no such directory: measuring says so as the request expects
            return measure(ask), 0.0
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and max_age_s > 0:
            age = self._clock() - kept[0]
            if age <= max_age_s:
                return kept[1], age
        result = measure(ask)
        with self._lock:
            self._kept.pop(key, None)
            self._kept[key] = (self._clock(), result)
            while len(self._kept) > self._size:  # the oldest measured goes first
                del self._kept[next(iter(self._kept))]
        return result, 0.0
