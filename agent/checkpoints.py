"""The checkpoints an agent holds of a job, for a coordinator that restarted during it.

Each attempt of a mesh job keeps its checkpoint beside its cache, under the attempt's id
(``"{job}"``, ``"{job}-r{n}"``: see :func:`pac.pipeline.job.attempt_id`), and closing an
attempt keeps it. The newest of them (by step) is what this agent can give back.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pac.engine.checkpoint import CHECKPOINT_FILE
from pac.pipeline.job import job_of_attempt


def attempts_on_disk(cache_dir: Path, job_id: str) -> list[str]:
    """The attempts of ``job_id`` that left a folder (cache or checkpoint) here."""
    if not cache_dir.is_dir():
        return []
    return sorted(d.name for d in cache_dir.iterdir() if job_of_attempt(d.name)[0] == job_id)


def newest_checkpoint(
    cache_dir: Path, attempts: list[str]
) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """The newest checkpoint of ``attempts`` (of one job: see :func:`attempts_on_disk`)
    under ``cache_dir``: its tensors and its metadata (``step``, ``epoch``, and the
    ``attempt`` that wrote it); None when there is none."""
    newest: tuple[int, Path] | None = None
    for attempt in attempts:
        path = cache_dir / attempt / CHECKPOINT_FILE
        if not path.is_file():
            continue
        with safe_open(str(path), framework="pt") as handle:
            step = int((handle.metadata() or {}).get("step", 0))
        if newest is None or step > newest[0]:
            newest = (step, path)
    if newest is None:
        return None
    step, path = newest
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
    metadata["attempt"] = path.parent.name
    return load_file(str(path)), metadata
