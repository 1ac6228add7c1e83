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
    return save_state(path, trained_state(model, optimizer), step, epoch)


def save_state(path: Path, state: Tensors, step: int, epoch: int) -> Path:
    """Write ``state`` (as :func:`trained_state` names it, or a sharded device's part of
    it: :func:`join_shards`) as the checkpoint of ``step`` and ``epoch``."""
    # Written from the tensors' own memory (safetensors reads it in place, and no step runs
    # meanwhile): a copy would double the trained state in memory at every checkpoint.
    tensors = {k: v.contiguous() for k, v in state.items()}
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


def join_shards(tensors: Tensors, strict: bool = False) -> Tensors:
    """``tensors`` with every optimizer state given in pieces, ``"{param}::{state}@{start}"``
    (the parameter's flattened elements from ``start`` on, as the cache phase's sharded
    AdamW holds them: :mod:`pac.pipeline.sharded_adam`), joined into ``"{param}::{state}"``
    shaped like the parameter. A parameter with a state whose pieces do not cover it once
    each (a device's pieces missing) is left without any optimizer state, or with
    ``strict`` a ValueError."""
    out: Tensors = {}
    pieces: dict[str, dict[int, torch.Tensor]] = {}
    for name, value in tensors.items():
        whole, mark, start = name.rpartition("@")
        if mark and "::" in whole and start.isdigit():
            pieces.setdefault(whole, {})[int(start)] = value
        else:
            out[name] = value
    broken: set[str] = set()
    for whole, parts in sorted(pieces.items()):
        name = whole.split("::", 1)[0]
        param = out.get(name)
        problem = _gap(parts, param)
        if problem:
            if strict:
                raise ValueError(f"the pieces of {whole} {problem}")
            broken.add(name)
            continue
        assert param is not None
        joined = torch.cat([parts[start].flatten() for start in sorted(parts)])
        out[whole] = joined.view(param.shape)
    return {n: v for n, v in out.items() if n.split("::", 1)[0] not in broken or "::" not in n}


def _gap(parts: dict[int, torch.Tensor], param: torch.Tensor | None) -> str:
    """Why ``parts`` (pieces by start) do not make up ``param`` (empty when they do)."""
    if param is None:
        return "come without their parameter"
    at = 0
    for start in sorted(parts):
        if start != at:
            return f"leave elements {at}..{start} out" if start > at else f"overlap at {start}"
        at += parts[start].numel()
    if at != param.numel():
        return f"cover {at} of the parameter's {param.numel()} elements"
    return ""
