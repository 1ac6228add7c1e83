"""Profile a model's blocks on this device: what the planner needs to cut stages.

Each block runs forward on a random batch of token ids; one untimed warm-up, then the
median of ``repeats`` timed runs. Side-block forward+backward and memory per micro-batch
come with the side network (a later issue).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from agent.errors import BadRequest
from pac.families import family_for_dir


@dataclass(frozen=True)
class LayerTiming:
    index: int
    forward_seconds: float
    parameter_bytes: int
    activation_bytes: int


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    run()
    times = []
    for _ in range(max(repeats, 1)):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.no_grad()
def profile_layers(
    model_dir: Path,
    start: int,
    end: int,
    batch_size: int,
    seq_len: int,
    repeats: int,
    device: torch.device | None = None,
) -> tuple[float, list[LayerTiming]]:
    """(embed seconds, per-block timings) for blocks ``[start, end)`` (end 0 = all) on a
    ``[batch_size, seq_len]`` batch of random token ids."""
    family_class = family_for_dir(model_dir)
    family = family_class(family_class.load(model_dir))
    if device is not None:
        module: nn.Module = family.model
        module.to(device)
    blocks = family.blocks()
    end = end or len(blocks)
    if not 0 <= start < end <= len(blocks):
        raise BadRequest(f"layer range [{start}, {end}) is not inside {len(blocks)} blocks")
    vocab = int(getattr(family.model.config, "vocab_size", 1000))
    shape = (max(batch_size, 1), max(seq_len, 1))
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(0, vocab, shape, generator=generator),
        "attention_mask": torch.ones(shape, dtype=torch.long),
    }
    if family.is_encoder_decoder:
        batch["decoder_input_ids"] = batch["input_ids"]
        batch["decoder_attention_mask"] = batch["attention_mask"]
    if device is not None:
        batch = {name: tensor.to(device) for name, tensor in batch.items()}
    embed_seconds = _median_seconds(lambda: family.embed(batch), repeats)
    state = family.embed(batch)
    for index in range(start):
        state = family.run_block(index, state)
    timings = []
    for block in blocks[start:end]:
        current = state
        seconds = _median_seconds(lambda: family.run_block(block.index, current), repeats)  # noqa: B023
        state = family.run_block(block.index, state)
        timings.append(
            LayerTiming(
                block.index,
                seconds,
                sum(p.numel() * p.element_size() for p in block.module.parameters()),
                sum(t.numel() * t.element_size() for t in state.values()),
            )
        )
    return embed_seconds, timings
