"""Profile a model's blocks on this device: what the planner needs to cut stages.

Each block runs forward on a random batch of token ids; one untimed warm-up, then the
median of ``repeats`` timed runs. A block built like one already timed (same class, same
parameter shapes and dtypes, same input shapes, same layer type) takes that block's time
and does not run: the next block takes that block's output as its input, the same shapes
as its own would have (a block's time depends on shapes, not values, the premise of
timing a copy once). A backbone's blocks are mostly copies of one another, so on a
prepacked backbone only the blocks that are timed are packed (packing all of BERT-large's
24 blocks took 2.5 s of an agent capped at half a core, for one block's timing). On request
the parallel-adapters side network is timed too: its forward from the backbone's ladder and
its backward, as a training step runs it, at both batch sizes when a second one is asked
for (the side network's fixed cost per micro-batch: its many small matrices).
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
from transformers import PreTrainedModel

from agent.errors import BadRequest
from agent.profile_clock import Clock
from pac.families import ModelFamily, family_for_dir
from pac.techniques.packed_backbone import pack_block_linears
from pac.techniques.parallel_adapters.ladder import embed_points, layer_point

T = TypeVar("T")

# The side network's timing runs one in this many of its blocks (see _time_side_network).
SIDE_EVERY = 3


@dataclass(frozen=True)
class ProfileResult:
    """``embed_seconds`` and ``layers`` (backbone forward), ``side_seconds``: the whole side
    network's forward + backward on the same batch (0 when not asked for);
    ``second_batch_seconds``: each block's forward at a second batch size (when asked);
    ``backward_seconds``: each block's backward for a baseline technique (when asked);
    ``side_second_batch_seconds``: the side network's forward + backward at the second
    batch size (when both are asked for)."""

    embed_seconds: float
    layers: list[LayerTiming]
    side_seconds: float = 0.0
    second_batch_seconds: tuple[float, ...] = ()
    backward_seconds: tuple[float, ...] = ()
    side_second_batch_seconds: float = 0.0


@dataclass(frozen=True)
class LayerTiming:
    index: int
    forward_seconds: float
    parameter_bytes: int
    activation_bytes: int


def _median_seconds(run: Callable[[], object], repeats: int, clock: Clock) -> float:
    return _timed(run, repeats, clock)[0]


def _timed(run: Callable[[], T], repeats: int, clock: Clock) -> tuple[float, T]:
    """The median seconds of ``repeats`` runs by ``clock`` after an untimed warm-up run, and
    the warm-up run's result (a caller that needs the output once does not run it again)."""
    result = run()
    times = []
    for _ in range(max(repeats, 1)):
        started = clock()
        run()
        times.append(clock() - started)
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
    keep: Callable[[PreTrainedModel, bool], None] | None = None,
    clock: Clock = time.perf_counter,
) -> ProfileResult:
    """Timings of blocks ``[start, end)`` (end 0 = all) on a ``[batch_size, seq_len]`` batch
    of random token ids, with ``side_network`` of the side network on that batch, and with
    ``second_batch_size`` of the blocks on a second batch (the model is loaded once), and
    with ``backward_technique`` (``full``, ``lora``, ``adapters``) each block's backward as
    that baseline runs it. ``packed_backbone``: the blocks run on oneDNN-prepacked weights
    (pac.techniques.packed_backbone), as a parallel-adapters job runs them by default.
    ``keep``: given the backbone and whether blocks of it are packed at the end, when it is
    what a parallel-adapters job's replica loads (on the CPU, frozen, only run forward;
    agent/model_handoff.py). ``clock``: what the runs are timed by (agent/profile_clock.py)."""
    if packed_backbone and backward_technique:
        raise BadRequest("a prepacked backbone has no backward: profile one or the other")
    family_class = family_for_dir(model_dir)
    family = family_class(family_class.load(model_dir))
    if device is not None:
        module: nn.Module = family.model
        module.to(device)
    blocks = family.blocks()
    end = end or len(blocks)
    if not 0 <= start < end <= len(blocks):
        raise BadRequest(f"layer range [{start}, {end}) is not inside {len(blocks)} blocks")
    packing: Packing | None = None
    if packed_backbone:
        family.model.requires_grad_(False)
        packing = Packing(family)
    batch = _random_batch(family, batch_size, seq_len, device)
    # The side network reads every block's output: timing the blocks gives one of the same
    # shapes for each (its values do not change a step's time).
    ladder: dict[str, torch.Tensor] | None = (
        {} if side_network and start == 0 and end == len(blocks) else None
    )
    with torch.no_grad():
        embed_seconds = _median_seconds(lambda: family.embed(batch), repeats, clock)
        timings = _time_blocks(family, batch, start, end, repeats, clock, ladder, packing)
        second: tuple[float, ...] = ()
        if second_batch_size:
            other = _random_batch(family, second_batch_size, seq_len, device)
            second = tuple(
                t.forward_seconds
                for t in _time_blocks(family, other, start, end, repeats, clock, packing=packing)
            )
    side, side_second = 0.0, 0.0
    if side_network:
        side, side_second = _time_side_network(
            family, batch, repeats, clock, ladder, other if second_batch_size else None
        )
    backward: tuple[float, ...] = ()
    if backward_technique:
        if backward_technique not in BACKWARD_TECHNIQUES:
            raise BadRequest(
                f"cannot profile the backward of {backward_technique!r}; choose one of "
                f"{', '.join(BACKWARD_TECHNIQUES)}"
            )
        both = _time_blocks_backward(
            family, batch, start, end, repeats, backward_technique == "full", clock
        )
        backward = tuple(
            max(b - t.forward_seconds, 0.0) for b, t in zip(both, timings, strict=True)
        )
    if keep is not None and not backward_technique and (device is None or device.type == "cpu"):
        family.model.requires_grad_(False)
        keep(family.model, bool(packing is not None and packing.packed))
    return ProfileResult(embed_seconds, timings, side, second, backward, side_second)


BACKWARD_TECHNIQUES = ("full", "lora", "adapters")


def _time_blocks_backward(
    family: ModelFamily,
    batch: dict[str, torch.Tensor],
    start: int,
    end: int,
    repeats: int,
    weights: bool,
    clock: Clock,
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
        inputs = {k: v.detach().requires_grad_(v.is_floating_point()) for k, v in state.items()}

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

        timed[signature] = _median_seconds(step, repeats, clock)
        seconds.append(timed[signature])
        with torch.no_grad():
            state = outputs[signature] = family.run_block(block.index, state)
    return seconds


def block_signature(family: ModelFamily, index: int, state: dict[str, torch.Tensor]) -> Hashable:
    """What a block's time depends on: its class, its parameters' and buffers' names,
    shapes and dtypes (a prepacked linear's weight is a buffer), its inputs' shapes and
    dtypes, and the layer type where the config gives one per layer (``layer_types``:
    sliding-window and full-attention layers alike in their weights)."""
    return (module_signature(family, index), _state_signature(state))


def module_signature(family: ModelFamily, index: int) -> Hashable:
    """The part of :func:`block_signature` that the block's module gives."""
    module = family.blocks()[index].module
    layer_types = getattr(family.model.config, "layer_types", None)
    if not isinstance(layer_types, list | tuple) or index >= len(layer_types):
        layer_types = None
    return (
        type(module).__qualname__,
        tuple((n, tuple(p.shape), p.dtype) for n, p in module.named_parameters()),
        tuple((n, tuple(b.shape), b.dtype) for n, b in module.named_buffers()),
        layer_types[index] if layer_types else None,
    )


def _state_signature(state: dict[str, torch.Tensor]) -> Hashable:
    return tuple(
        (k, tuple(v.shape), v.dtype) for k, v in sorted(state.items()) if torch.is_tensor(v)
    )


class Packing:
    """Prepacks a block's linear layers when it is first timed. Each block's module
    signature is taken before any block is packed: a packed block and its unpacked copies
    then still count as alike, and the copies are never packed nor run."""

    def __init__(self, family: ModelFamily) -> None:
        self.family = family
        self.signatures = {
            block.index: module_signature(family, block.index) for block in family.blocks()
        }
        self.packed: set[int] = set()

    def signature(self, index: int, state: dict[str, torch.Tensor]) -> Hashable:
        return (self.signatures[index], _state_signature(state))

    def prepare(self, index: int) -> None:
        if index not in self.packed:
            pack_block_linears(self.family, only=(index,))
            self.packed.add(index)


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
    clock: Clock,
    ladder: dict[str, torch.Tensor] | None = None,
    packing: Packing | None = None,
) -> list[LayerTiming]:
    """Each block's forward timing; with ``ladder``, the embedding and every block's output
    are put in it by ladder point name (pac/techniques/parallel_adapters/ladder.py); with
    ``packing``, a block is prepacked before it is timed."""
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
        if packing is not None:
            signature = packing.signature(block.index, current)
        else:
            signature = block_signature(family, block.index, current)
        if signature not in timed:
            if packing is not None:
                packing.prepare(block.index)
            # The warm-up run's output is the next block's input: no extra run to advance.
            timed[signature] = _timed(
                lambda: family.run_block(block.index, current),  # noqa: B023
                repeats,
                clock,
            )
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
    clock: Clock,
    ladder: dict[str, torch.Tensor] | None = None,
    other: dict[str, torch.Tensor] | None = None,
) -> tuple[float, float]:
    """Forward + backward of a default parallel-adapters side network (r = 8, every layer
    laddered) from the backbone's ladder of ``batch`` (``ladder``, when the blocks' timing
    collected it): what a training step adds; and on ``other`` (a second batch size) when
    given, else 0. Only the ladder's shapes matter, so ``other``'s ladder is a slice or a
    repetition of ``batch``'s rows.

    The side blocks are alike, so one in ``SIDE_EVERY`` is timed (the side network of
    ``ladder_every``) and the time scaled to all of them. On the BERT-large shape at half
    a core: 8 of 24 blocks, x3, gave 445 and 2040 ms at 1 and 8 samples, all 24 gave 420
    and 2100 ms."""
    from pac.tasks import TaskSpec
    from pac.techniques import build_technique
    from pac.techniques.parallel_adapters import ParallelAdaptersModel

    # The side network reads the ladder, not the backbone: nothing is packed for it.
    settings = {"packed_backbone": False, "ladder_every": SIDE_EVERY}
    model = build_technique("parallel-adapters", family, TaskSpec("classification"), settings)
    assert isinstance(model, ParallelAdaptersModel)
    scale = len(family.blocks()) / len(model.side.laddered)
    model.to(batch["input_ids"].device)
    if ladder is None or not set(model.points) <= set(ladder):
        with torch.no_grad():
            ladder = model.ladder(batch)
    ladder = {point: ladder[point] for point in model.points}

    def timed(points: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor]) -> float:
        def step() -> None:
            outputs = model.forward_from_ladder(points, inputs)
            outputs.float().sum().backward()
            model.zero_grad(set_to_none=True)

        return _median_seconds(step, repeats, clock) * scale

    seconds = timed(ladder, batch)
    if other is None:
        return seconds, 0.0
    rows = other["input_ids"].shape[0]
    return seconds, timed({p: _rows(v, rows) for p, v in ladder.items()}, other)


def _rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor`` with ``rows`` rows: its first ones, or its rows repeated."""
    if rows <= tensor.shape[0]:
        return tensor[:rows]
    times = -(-rows // tensor.shape[0])
    return tensor.repeat(times, *([1] * (tensor.dim() - 1)))[:rows]
