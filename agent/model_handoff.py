"""The backbone a job's profiling loaded, kept for the same job's OpenJob.

A job's first request to an agent is Profile: the agent loads the model and times its
blocks. Seconds later OpenJob loads the same files again. Loading is the largest part of
both: BERT-large's 1.3 GB took an agent capped at half a core 4.3 s to profile's load and
5.8 s to OpenJob's (with the tokenizer). So profiling hands its backbone over: the next
job to open on the same model files and dtype takes it instead of reading them again.

What is handed over is what a parallel-adapters job's replica would build anyway: the
backbone frozen, in eval mode, with the linear layers of the blocks that profiling timed
prepacked (the job's own packing skips them). Profiling only runs the backbone forward, so
its weights are the files'. Anything else (a baseline's profile, which times a backward, or
a model on an accelerator) is not kept.

One backbone is kept, for ``keep_s`` seconds at most (the agent drops it then, so that a
profile that no job follows does not hold its memory), and it is taken once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel

from agent.profile_memo import Stamp, model_files_stamp

# How long a profiled backbone waits for its job's OpenJob (the coordinator opens the job
# after probing links and planning: seconds).
KEEP_S = 120.0


@dataclass
class _Kept:
    model_dir: Path
    stamp: Stamp
    model: PreTrainedModel
    packed: bool
    since: float


class ModelHandoff:
    """At most one profiled backbone, by model directory, file stamp and dtype."""

    def __init__(self, keep_s: float = KEEP_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.keep_s = keep_s
        self._clock = clock
        self._lock = threading.Lock()
        self._kept: _Kept | None = None

    def offer(self, model_dir: Path, model: PreTrainedModel, packed: bool) -> None:
        """Keep ``model``, loaded from ``model_dir``'s files as they are now (in place of
        any backbone kept before); ``packed``: some of its blocks are prepacked."""
        path = Path(model_dir).resolve()
        kept = _Kept(path, model_files_stamp(path), model, packed, self._clock())
        with self._lock:
            self._kept = kept

    def take(
        self, model_dir: Path | str, dtype: torch.dtype, packed: bool
    ) -> PreTrainedModel | None:
        """The kept backbone when it was loaded from ``model_dir``'s files as they are now,
        in ``dtype``, at most ``keep_s`` ago, and prepacked where ``packed`` (a job that
        packs its backbone) or not at all; None otherwise. Either way nothing is kept
        after."""
        with self._lock:
            kept, self._kept = self._kept, None
        if kept is None or self._clock() - kept.since > self.keep_s:
            return None
        path = Path(model_dir).resolve()
        if kept.model_dir != path or kept.model.dtype != dtype or (kept.packed and not packed):
            return None
        try:
            if model_files_stamp(path) != kept.stamp:
                return None
        except OSError:
            return None
        return kept.model

    def expire(self) -> bool:
        """Drop the kept backbone if it is older than ``keep_s``; returns whether one was
        dropped."""
        with self._lock:
            if self._kept is None or self._clock() - self._kept.since <= self.keep_s:
                return False
            self._kept = None
            return True

    @property
    def holding(self) -> bool:
        with self._lock:
            return self._kept is not None
