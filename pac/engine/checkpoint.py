"""Checkpoints of what a run trains: the trained parameters and their optimizer state, as
one safetensors file written atomically (a crash leaves the previous checkpoint, never a
torn one).

Tensor names: ``"{param}"`` for a parameter and ``"{param}::{state}"`` for its optimizer
state (AdamW: ``step``, ``exp_avg``, ``exp_avg_sq``). Only parameters that have optimizer
state are included: on a pipeline device those are its own stage's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from pac.engine.export import atomic_write
from pac.techniques.base import TunedModel

CHECKPOINT_FILE = "checkpoint.safetensors"
Tensors = dict[str, torch.Tensor]


def trained_state(model: TunedModel, optimizer: torch.optim.Optimizer) -> Tensors:
    """The parameters this optimizer has stepped, and their optimizer state."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: Tensors = {}
    for param, state in optimizer.state.items():
        name = names[id(param)]
        out[name] = param.detach()
        for key, value in state.items():
            out[f"{name}::{key}"] = torch.as_tensor(value).detach()
    return out


def save_checkpoint(
    path: Path, model: TunedModel, optimizer: torch.optim.Optimizer, step: int, epoch: int
) -> Path:
    # Written from the tensors' own memory (safetensors reads it in place, and no step runs
    # meanwhile): a copy would double the trained state in memory at every checkpoint.
    tensors = {k: v.contiguous() for k, v in trained_state(model, optimizer).items()}
    metadata = {"step": str(step), "epoch": str(epoch)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return path


def split_state(tensors: Tensors) -> tuple[Tensors, dict[str, dict[str, torch.Tensor]]]:
    """``tensors`` in the layout of :func:`trained_state` as (parameters, optimizer state
    per parameter name)."""
    params = {name: value for name, value in tensors.items() if "::" not in name}
    states: dict[str, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if "::" in name:
            param, key = name.split("::", 1)
            states.setdefault(param, {})[key] = value
    unknown = sorted(set(states) - set(params))
    if unknown:
        raise ValueError(f"optimizer state without its parameter: {', '.join(unknown[:5])}")
    return params, states


def load_checkpoint(path: Path, model: TunedModel, optimizer: torch.optim.Optimizer) -> None:
    """Restore parameters and optimizer state saved by :func:`save_checkpoint`."""
    saved, states = split_state(load_file(str(path)))
    params = dict(model.named_parameters())
    for name, value in saved.items():
        with torch.no_grad():
            params[name].copy_(value)
        optimizer.state[params[name]] = {k: v.clone() for k, v in states.get(name, {}).items()}
