"""Trained adapters on disk: ``adapters.safetensors`` + ``adapter_config.json``.

Both files are written atomically (temporary file, flushed to the disk, then renamed), so a
crash, even a power cut, never leaves a torn export.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pac.durable import replace_durably
from pac.tasks import TaskSpec

WEIGHTS_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"
FORMAT = "pac-mesh-adapters/1"


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``
    once its bytes are on the disk (pac.durable.replace_durably)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        replace_durably(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_adapters(
    out_dir: Path,
    tensors: dict[str, torch.Tensor],
    *,
    technique: str,
    settings: dict[str, Any],
    task: TaskSpec,
    family: str,
    model_fingerprint: str,
) -> Path:
    """Write the export; returns the weights file's path."""
    config = {
        "format": FORMAT,
        "technique": technique,
        "settings": settings,
        "task": {**asdict(task), "labels": list(task.labels)},
        "family": family,
        "model_fingerprint": model_fingerprint,
    }
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    weights = out_dir / WEIGHTS_FILE
    atomic_write(weights, lambda tmp: save_file(contiguous, tmp, metadata={"format": FORMAT}))
    atomic_write(
        out_dir / CONFIG_FILE,
        lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"),
    )
    return weights


def load_adapters(adapters_dir: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read an export: ``(config, tensors)``; a clear error when it is incomplete."""
    config_path, weights_path = adapters_dir / CONFIG_FILE, adapters_dir / WEIGHTS_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{adapters_dir} is not an adapters export: {path.name} is missing "
                "(write one with `pac train --out DIR`)"
            )
    config = json.loads(config_path.read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{config_path}: unknown format {config.get('format')!r}")
    return config, load_file(str(weights_path))


def task_from_config(config: dict[str, Any]) -> TaskSpec:
    task = dict(config["task"])
    task["labels"] = tuple(task.get("labels", ()))
    return TaskSpec(**task)
