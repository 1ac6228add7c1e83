"""Profile a model's blocks on this device: what the planner needs to cut stages.

Each block runs forward on a random batch of token ids; one untimed warm-up, then the
median of ``repeats`` timed runs. A block built like one already timed (same class, same
parameter shapes and dtypes, same input shapes, same layer type) takes that block's time
and does not run: the next block takes that block's output as its input, the same shapes
as its own would have (a block's time depends on shapes, not values, the premise of
timing a copy once). A backbone's blocks are mostly copies of one another. On request the
parallel-adapters side network is timed too: its forward from the backbone's ladder and
its backward, as a training step runs it.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from agent.errors import BadRequest
from pac.families import ModelFamily, family_for_dir
from pac.techniques.packed_backbone import pack_block_linears
from pac.techniques.parallel_adapters.ladder import embed_points, layer_point

T = TypeVar("T")


@dataclass(frozen=True)
class ProfileResult:
    """``embed_seconds`` and ``layers`` (backbone forward), ``side_seconds``: the whole side
    network's forward + backward on the same batch (0 when not asked for);
    ``second_batch_seconds``: each block's forward at a second batch size (when asked);
    ``backward_seconds``: each block's backward for a baseline technique (when asked)."""

    embed_seconds: float
    layers: list[LayerTiming]
    side_seconds: float = 0.0
    second_batch_seconds: tuple[float, ...] = ()
    backward_seconds: tuple[float, ...] = ()


@dataclass(frozen=True)
class LayerTiming:
    index: int
    forward_seconds: float
    parameter_bytes: int
    activation_bytes: int


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    return _timed(run, repeats)[0]


def _timed(run: Callable[[], T], repeats: int) -> tuple[float, T]:
    """The median seconds of ``repeats`` runs after an untimed warm-up run, and the warm-up
    run's result (a caller that needs the output once does not run it again)."""
    result = run()
    times = []
    for _ in range(max(repeats, 1)):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def profile_layers(
    model_dir: Path,
    start: int,
    end: int,
    batch_size: int,
    seq_len: int,
    repeats: int,
    device: torch.device | None = None,
    side_network: bool = False,
    second_batch_size: int = 0,
    backward_technique: str = "",
    packed_backbone: bool = False,
) -> ProfileResult:
    """Timings of blocks ``[start, end)`` (end 0 = all) on a ``[batch_size, seq_len]`` batch
    of random token ids, with ``side_network`` of the side network on that batch, and with
    ``second_batch_size`` of the blocks on a second batch (the model is loaded once), and
    with ``backward_technique`` (``full``, ``lora``, ``adapters``) each block's backward as
    that baseline runs it. ``packed_backbone``: the blocks run on oneDNN-prepacked weights
    (pac.techniques.packed_backbone), as a parallel-adapters job runs them by default."""
    if packed_backbone and backward_technique:
        raise BadRequest("a prepacked backbone has no backward: profile one or the other")
    family_class = family_for_dir(model_dir)
    family = family_class(family_class.load(model_dir))
    if device is not None:
        module: nn.Module = family.model
        module.to(device)
    if packed_backbone:
        family.model.requires_grad_(False)
        pack_block_linears(family)
    blocks = family.blocks()
    end = end or len(blocks)
    if not 0 <= start < end <= len(blocks):
        raise BadRequest(f"layer range [{start}, {end}) is not inside {len(blocks)} blocks")
    batch = _random_batch(family, batch_size, seq_len, device)
    # The side network reads every block's output: timing the blocks gives one of the same
    # shapes for each (its values do not change a step's time).
    ladder: dict[str, torch.Tensor] | None = (
        {} if side_network and start == 0 and end == len(blocks) else None
    )
    with torch.no_grad():
        embed_seconds = _median_seconds(lambda: family.embed(batch), repeats)
        timings = _time_blocks(family, batch, start, end, repeats, ladder)
        second: tuple[float, ...] = ()
        if second_batch_size:
            other = _random_batch(family, second_batch_size, seq_len, device)
            second = tuple(
                t.forward_seconds for t in _time_blocks(family, other, start, end, repeats)
            )
    side = _time_side_network(family, batch, repeats, ladder) if side_network else 0.0
    backward: tuple[float, ...] = ()
    if backward_technique:
        if backward_technique not in BACKWARD_TECHNIQUES:
            raise BadRequest(
                f"cannot profile the backward of {backward_technique!r}; choose one of "
                f"{', '.join(BACKWARD_TECHNIQUES)}"
            )
        both = _time_blocks_backward(
            family, batch, start, end, repeats, backward_technique == "full"
        )
        backward = tuple(
            max(b - t.forward_seconds, 0.0) for b, t in zip(both, timings, strict=True)
        )
    return ProfileResult(embed_seconds, timings, side, second, backward)


BACKWARD_TECHNIQUES = ("full", "lora", "adapters")


def _time_blocks_backward(
    family: ModelFamily,
    batch: dict[str, torch.Tensor],
    start: int,
    end: int,
    repeats: int,
    weights: bool,
) -> list[float]:
    """Per block, forward + backward seconds: the gradient of the block's input, and with
    ``weights`` of its weights too (full fine-tuning; LoRA and adapters train a few small
    matrices beside frozen weights, so their backward is the input gradient's)."""
    blocks = family.blocks()
    with torch.no_grad():
        state = family.embed(batch)
        for index in range(start):
            state = family.run_block(index, state)
    seconds = []
    timed: dict[Hashable, float] = {}
    outputs: dict[Hashable, dict[str, torch.Tensor]] = {}  # (see _time_blocks)
    for block in blocks[start:end]:
        signature = block_signature(family, block.index, state)
        if signature in timed:
            seconds.append(timed[signature])
            state = outputs[signature]
            continue
        for param in block.module.parameters():
            param.requires_grad_(weights)
        inputs = {
            k: v.detach().requires_grad_(v.is_floating_point()) for k, v in state.items()
        }

        def step(
            index: int = block.index,
            module: torch.nn.Module = block.module,
            inputs: dict[str, torch.Tensor] = inputs,
        ) -> None:
            out = family.run_block(index, inputs)
            out["hidden"].float().sum().backward()
            for value in inputs.values():
                value.grad = None
            module.zero_grad(set_to_none=True)

        timed[signature] = _median_seconds(step, repeats)
        seconds.append(timed[signature])
        with torch.no_grad():
            state = outputs[signature] = family.run_block(block.index, state)
    return seconds


def block_signature(family: ModelFamily, index: int, state: dict[str, torch.Tensor]) -> Hashable:
    """What a block's time depends on: its class, its parameters' and buffers' names,
    shapes and dtypes (a prepacked linear's weight is a buffer), its inputs' shapes and
    dtypes, and the layer type where the config gives one per layer (``layer_types``:
    sliding-window and full-attention layers alike in their weights)."""
    module = family.blocks()[index].module
    layer_types = getattr(family.model.config, "layer_types", None)
    if not isinstance(layer_types, list | tuple) or index >= len(layer_types):
        layer_types = None
    return (
        type(module).__qualname__,
        tuple((n, tuple(p.shape), p.dtype) for n, p in module.named_parameters()),
        tuple((n, tuple(b.shape), b.dtype) for n, b in module.named_buffers()),
        tuple(
            (k, tuple(v.shape), v.dtype) for k, v in sorted(state.items()) if torch.is_tensor(v)
        ),
        layer_types[index] if layer_types else None,
    )


def _random_batch(
    family: ModelFamily, batch_size: int, seq_len: int, device: torch.device | None
) -> dict[str, torch.Tensor]:
    """``[batch_size, seq_len]`` random token ids, all real (the mask all ones)."""
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
    return batch


def _time_blocks(
    family: ModelFamily,
    batch: dict[str, torch.Tensor],
    start: int,
    end: int,
    repeats: int,
    ladder: dict[str, torch.Tensor] | None = None,
) -> list[LayerTiming]:
    """Each block's forward timing; with ``ladder``, the embedding and every block's output
    are put in it by ladder point name (pac/techniques/parallel_adapters/ladder.py)."""
    blocks = family.blocks()
    state = family.embed(batch)
    if ladder is not None:
        ladder.update(embed_points(family, state))
    for index in range(start):
        state = family.run_block(index, state)
    timings = []
    # Per signature: the time, and the output its block gave (shapes are all a later
    # block's timing and the side network's take from it).
    timed: dict[Hashable, tuple[float, dict[str, torch.Tensor]]] = {}
    for block in blocks[start:end]:
        current = state
        signature = block_signature(family, block.index, current)
        if signature not in timed:
            # The warm-up run's output is the next block's input: no extra run to advance.
            timed[signature] = _timed(lambda: family.run_block(block.index, current), repeats)  # noqa: B023
        seconds, state = timed[signature]
        if ladder is not None:
            ladder[layer_point(block.index)] = state["hidden"]
        timings.append(
            LayerTiming(
                block.index,
                seconds,
                sum(p.numel() * p.element_size() for p in block.module.parameters()),
                sum(t.numel() * t.element_size() for t in state.values()),
            )
        )
    return timings


def _time_side_network(
    family: ModelFamily,
    batch: dict[str, torch.Tensor],
    repeats: int,
    ladder: dict[str, torch.Tensor] | None = None,
) -> float:
    """Forward + backward of a default parallel-adapters side network (r = 8, every layer
    laddered) from the backbone's ladder of ``batch`` (``ladder``, when the blocks' timing
    collected it): what a training step adds."""
    from pac.tasks import TaskSpec
    from pac.techniques import build_technique
    from pac.techniques.parallel_adapters import ParallelAdaptersModel

    model = build_technique("parallel-adapters", family, TaskSpec("classification"), {})
    assert isinstance(model, ParallelAdaptersModel)
    model.to(batch["input_ids"].device)
    if ladder is None or not set(model.points) <= set(ladder):
        with torch.no_grad():
            ladder = model.ladder(batch)
    ladder = {point: ladder[point] for point in model.points}

    def step() -> None:
        outputs = model.forward_from_ladder(ladder, batch)
        outputs.float().sum().backward()
        model.zero_grad(set_to_none=True)

    return _median_seconds(step, repeats)
