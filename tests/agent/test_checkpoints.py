"""An agent finds its newest checkpoint of a job among the job's attempts."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from agent.checkpoints import attempts_on_disk, newest_checkpoint
from pac.engine.checkpoint import CHECKPOINT_FILE


def write(root: Path, attempt: str, step: int | None) -> None:
    folder = root / attempt
    folder.mkdir(parents=True)
    if step is not None:
        metadata = {"step": str(step), "epoch": "1"}
        save_file({"w": torch.full((2,), float(step))}, str(folder / CHECKPOINT_FILE), metadata)


def test_the_newest_checkpoint_of_any_attempt_of_the_job_is_found(tmp_path: Path) -> None:
    write(tmp_path, "abc", 4)
    write(tmp_path, "abc-r1", 9)  # a later attempt, further on
    write(tmp_path, "abc-r2", None)  # an attempt that wrote no checkpoint yet
    write(tmp_path, "abcd", 50)  # another job
    write(tmp_path, "xyz-r1", 70)  # another job's attempt
    assert attempts_on_disk(tmp_path, "abc") == ["abc", "abc-r1", "abc-r2"]
    found = newest_checkpoint(tmp_path, attempts_on_disk(tmp_path, "abc"))
    assert found is not None
    tensors, metadata = found
    assert metadata["step"] == "9" and metadata["attempt"] == "abc-r1"
    assert torch.equal(tensors["w"], torch.full((2,), 9.0))
    assert newest_checkpoint(tmp_path, attempts_on_disk(tmp_path, "nope")) is None
    missing = tmp_path / "missing"
    assert newest_checkpoint(missing, attempts_on_disk(missing, "abc")) is None
